"""The session cookie: a signed, opaque session id, and nothing else.

The signed value is WebOb's ``SignedSerializer``'s, computed here with
hashlib's HMAC (see :class:`RotatingSigner`): HMAC-SHA512 of the id under
the salt and secret, checked with ``hmac.compare_digest``, and an id that
is not well formed refused; WebOb's ``CookieProfile`` sets the cookie's
attributes. Several secrets may be given: the first signs, every one
verifies, so secrets can be rotated.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Any

from webob import Request, Response
from webob.cookies import CookieProfile

from .options import CookieOptions

SALT = "pyramid_pgstore.session."
CONFIGURED: Any = object()  # SessionCookie.set: the Max-Age the options give

# 32 random bytes, URL-safe base64 without padding: 43 characters.
_SESSION_ID = re.compile(rb"[A-Za-z0-9_-]{43}\Z")


def new_session_id() -> str:
    """A fresh session id: 256 bits from the operating system's CSPRNG."""
    return secrets.token_urlsafe(32)


def _signing_key(secret: str) -> bytes:
    """The HMAC key WebOb's ``SignedSerializer`` makes of the salt and a
    secret: both as latin-1, or both as UTF-8 if the secret is not latin-1."""
    try:
        return SALT.encode("latin-1") + secret.encode("latin-1")
    except UnicodeEncodeError:
        return SALT.encode("utf-8") + secret.encode("utf-8")


class RotatingSigner:
    """Signs with the first secret; verifies with any of them.

    A cookie is ``urlsafe_b64encode(signature + id)`` without its padding,
    the signature the HMAC of the id's ASCII bytes: WebOb's
    ``SignedSerializer`` format, so cookies of either stay valid. Each
    secret's HMAC is keyed once, here, and copied for each cookie (WebOb's
    runs Python's HMAC, keyed again for every cookie: 24k instructions more
    per request, bench/counts.py).
    """

    def __init__(self, secret_list: Sequence[str], hashalg: str = "sha512") -> None:
        if not secret_list:
            raise ValueError("at least one secret is needed")
        self._keyed = [hmac.new(_signing_key(secret), digestmod=hashalg) for secret in secret_list]
        self._size = self._keyed[0].digest_size

    @staticmethod
    def _signature(keyed: Any, payload: bytes) -> bytes:
        mac = keyed.copy()
        mac.update(payload)
        return mac.digest()

    def dumps(self, session_id: str) -> bytes:
        payload = session_id.encode("ascii")
        return base64.urlsafe_b64encode(self._signature(self._keyed[0], payload) + payload).rstrip(b"=")

    def loads(self, bstruct: bytes) -> str:
        return self.verify(bstruct)[0]

    def verify(self, bstruct: bytes) -> tuple[str, bool]:
        """Return the id and whether the current (first) secret signed it.

        :raises ValueError: not base64, no secret's signature matches, or
            the payload is not a session id.
        """
        try:
            signed = base64.urlsafe_b64decode(bstruct + b"=" * (-len(bstruct) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("invalid session cookie") from None
        signature, payload = signed[: self._size], signed[self._size :]
        for position, keyed in enumerate(self._keyed):
            if hmac.compare_digest(self._signature(keyed, payload), signature):
                if not _SESSION_ID.match(payload):
                    raise ValueError("not a session id")
                return payload.decode("ascii"), position == 0
        raise ValueError("invalid session cookie")


class SessionCookie:
    """Reads and writes the session cookie of one configuration.

    Holds no per-request state, so one instance serves every thread.
    """

    def __init__(self, options: CookieOptions) -> None:
        self.options = options
        self.name = options.cookie_name
        self.max_age = options.max_age
        self.signer = RotatingSigner(options.secret)
        self._profile = CookieProfile(
            options.cookie_name,
            secure=options.secure,
            max_age=options.max_age,
            httponly=options.httponly,
            samesite=options.samesite,
            path=options.path,
            domains=[options.domain] if options.domain else None,
            serializer=self.signer,
        )

    def read(self, request: Request) -> tuple[str | None, bool]:
        """The session id in the request's cookie, and whether it is signed
        with the current secret. ``(None, False)`` for a missing, tampered,
        truncated, wrongly signed or undecodable cookie."""
        try:
            value = request.cookies.get(self.name)
        except UnicodeError:  # bytes that are not a cookie value
            return None, False
        return self.verify(value)

    def verify(self, value: str | None) -> tuple[str | None, bool]:
        """:meth:`read` for a cookie's value (None: no cookie)."""
        if value is None:
            return None, False
        try:
            return self.signer.verify(value.encode("latin-1"))
        except (ValueError, UnicodeError):  # UnicodeError: bytes that are not a cookie value
            return None, False

    def value(self, session_id: str) -> str:
        """The cookie's value for ``session_id``: the signed id."""
        return self.signer.dumps(session_id).decode("ascii")

    def set(self, response: Response, session_id: str, max_age: Any = CONFIGURED) -> None:
        """Send the signed id, with the configured Max-Age unless ``max_age``
        says otherwise (seconds, or None for a browser-session cookie)."""
        if max_age is CONFIGURED:
            self._profile.set_cookies(response, session_id)
        else:
            self._profile.set_cookies(response, session_id, max_age=max_age)
        vary_on_cookie(response)

    def delete(self, response: Response) -> None:
        """Tell the browser to drop the cookie."""
        self._profile.set_cookies(response, None)
        vary_on_cookie(response)


def vary_on_cookie(response: Response) -> None:
    """A response that sets the session cookie depends on the Cookie header:
    a shared cache must not hand it to another user."""
    headers = response.headerlist
    for name, _ in headers:
        if name.lower() == "vary":
            vary = response.vary or ()
            if "Cookie" not in vary:
                response.vary = (*vary, "Cookie")
            return
    headers.append(("Vary", "Cookie"))  # the usual case, no Vary yet: nothing to parse
