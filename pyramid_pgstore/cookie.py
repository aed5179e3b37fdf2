"""The session cookie: a signed, opaque session id, and nothing else.

Built from WebOb's parts: ``SignedSerializer`` (HMAC-SHA512, checked with
``hmac.compare_digest``) around a serializer that only accepts well-formed ids,
inside a ``CookieProfile`` for the cookie attributes. Several secrets may be
given: the first signs, every one verifies, so secrets can be rotated.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

from webob import Request, Response
from webob.cookies import CookieProfile, SignedSerializer

from .options import CookieOptions

SALT = "pyramid_pgstore.session."
CONFIGURED: Any = object()  # SessionCookie.set: the Max-Age the options give

# 32 random bytes, URL-safe base64 without padding: 43 characters.
_SESSION_ID = re.compile(rb"[A-Za-z0-9_-]{43}\Z")


def new_session_id() -> str:
    """A fresh session id: 256 bits from the operating system's CSPRNG."""
    return secrets.token_urlsafe(32)


class _SessionIdSerializer:
    """The signed payload: the id's ASCII bytes; anything else is a ValueError."""

    def dumps(self, session_id: str) -> bytes:
        return session_id.encode("ascii")

    def loads(self, bstruct: bytes) -> str:
        if not _SESSION_ID.match(bstruct):
            raise ValueError("not a session id")
        return bstruct.decode("ascii")


class RotatingSigner:
    """Signs with the first secret; verifies with any of them."""

    def __init__(self, secret_list: Sequence[str], hashalg: str = "sha512") -> None:
        if not secret_list:
            raise ValueError("at least one secret is needed")
        ids = _SessionIdSerializer()
        self._signers = [SignedSerializer(secret, SALT, hashalg, serializer=ids) for secret in secret_list]

    def dumps(self, session_id: str) -> bytes:
        return self._signers[0].dumps(session_id)

    def loads(self, bstruct: bytes) -> str:
        return self.verify(bstruct)[0]

    def verify(self, bstruct: bytes) -> tuple[str, bool]:
        """Return the id and whether the current (first) secret signed it.

        :raises ValueError: no secret's signature matches, or the payload is
            not a session id.
        """
        for position, signer in enumerate(self._signers):
            try:
                return signer.loads(bstruct), position == 0
            except ValueError:
                continue
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
    vary = response.vary or ()
    if "Cookie" not in vary:
        response.vary = (*vary, "Cookie")
