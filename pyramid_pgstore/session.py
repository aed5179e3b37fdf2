"""The Pyramid session: ``request.session`` backed by a :class:`PGStore`.

Cost model, per request:

* never touching ``request.session`` costs nothing (Pyramid builds the session
  on first access);
* no valid cookie: no database work; a new session that is only read writes
  no row and sets no cookie;
* a valid cookie: one SELECT when the session is first accessed;
* at the end of the request, at most one write: the row is saved if its data
  changed, its expiry refreshed if ``reissue_time`` has passed, or it is
  deleted if the app emptied it; ``invalidate()`` deletes at once.

Methods that change the session are wrapped by :func:`_changes`; every other
dict method only reads.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pyramid.interfaces import ISession, ISessionFactory
from pyramid.request import Request
from pyramid.response import Response
from zope.interface import implementer, provider

from . import testing
from .cookie import SessionCookie, new_session_id, vary_on_cookie
from .options import CookieOptions, SessionOptions
from .store import PGStore, SessionRecord, storage_key

F = TypeVar("F", bound=Callable[..., Any])

_FLASH_PREFIX = "_f_"
_CSRF_KEY = "_csrft_"


def _changes(method: F) -> F:
    """Mark a dict method as one that changes the session (to be saved)."""

    def changing(self: PGStoreSession, *args: Any, **kwargs: Any) -> Any:
        self.changed()
        return method(self, *args, **kwargs)

    changing.__name__ = method.__name__
    changing.__doc__ = method.__doc__
    return changing  # type: ignore[return-value]


@implementer(ISession)
class PGStoreSession(dict):
    """One request's session. Created by the factory, configured by it.

    Changes are saved when the response is finished. A change inside a nested
    value (``session['cart'].append(x)``) is saved too: the data is compared
    with what was loaded. Calling :meth:`changed` is still allowed.
    """

    # Set by session_factory on the subclass it makes: the configuration,
    # captured once, so that a request only reads its cookie.
    store: PGStore
    cookie: SessionCookie
    options: SessionOptions
    _ttl: float | None  # server-side lifetime; None: no expiry
    _reissue_time: float | None

    def __init__(self, request: Request) -> None:
        self.request: Request | None = request
        self.new = True
        self.created = time.time() + testing.clock.offset
        self._id: str | None = None  # None until saved, and after invalidate()
        self._payload: str | None = None  # the stored data, as loaded
        self._refresh = False  # the expiry is due for a refresh
        self._resign = False  # the cookie was signed by a retired secret
        self._delete_cookie = False
        self._finishing = False  # _finish is due when the response is ready
        self._finished = False
        session_id, current_secret = self.cookie.read(request)
        if session_id is not None:
            record = self.store.load(session_id)
            if record is not None:
                self._adopt(session_id, record, current_secret)
            else:
                # Expired or deleted: drop the cookie unless the session gets
                # written, so the browser stops sending a dead id (a query each).
                self._delete_cookie = True
                self._finish_with_response()

    def _adopt(self, session_id: str, record: SessionRecord, current_secret: bool) -> None:
        dict.update(self, record.data)
        self._id = session_id
        self._payload = record.payload
        self.new = False
        self.created = record.created_on.timestamp()
        self._refresh = self._due_for_refresh(record)
        self._resign = not current_secret
        self._finish_with_response()  # to see changes, refresh or re-sign

    def _due_for_refresh(self, record: SessionRecord) -> bool:
        if self._ttl is None or self._reissue_time is None:
            return False
        remaining = (record.expires_on - record.loaded_at).total_seconds()
        return self._ttl - remaining >= self._reissue_time

    @property
    def storage_key(self) -> str | None:
        """The key this session is stored under (a hash of its id), once saved.

        Safe to show or log: unlike the id, it cannot be used as a cookie.
        """
        return storage_key(self._id) if self._id else None

    # -- ISession -------------------------------------------------------------

    def changed(self) -> None:
        """Mark the session as changed; it is saved when the response is finished."""
        self._finish_with_response()

    def invalidate(self) -> None:
        """Delete the stored session now (one round trip) and empty this one.

        The response drops the cookie, unless data is written to the session
        later in the request: that data goes to a brand-new session id.
        """
        if self._id is not None:
            self.store.delete(self._id)
            self._delete_cookie = True
        self._id = None
        self._payload = None
        self._refresh = self._resign = False
        dict.clear(self)
        self.new = True
        self.created = time.time() + testing.clock.offset
        self._finish_with_response()

    __setitem__ = _changes(dict.__setitem__)
    __delitem__ = _changes(dict.__delitem__)
    clear = _changes(dict.clear)
    pop = _changes(dict.pop)
    popitem = _changes(dict.popitem)
    setdefault = _changes(dict.setdefault)
    update = _changes(dict.update)
    __ior__ = _changes(dict.__ior__)

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        storage = self.setdefault(_FLASH_PREFIX + queue, [])
        if allow_duplicate or msg not in storage:
            storage.append(msg)

    def pop_flash(self, queue: str = "") -> list[Any]:
        return self.pop(_FLASH_PREFIX + queue, [])

    def peek_flash(self, queue: str = "") -> list[Any]:
        return self.get(_FLASH_PREFIX + queue, [])

    def new_csrf_token(self) -> str:
        token = secrets.token_hex(20)
        self[_CSRF_KEY] = token
        return token

    def get_csrf_token(self) -> str:
        token = self.get(_CSRF_KEY)
        if token is None:
            token = self.new_csrf_token()
        return token

    # -- finishing the response -----------------------------------------------

    def _finish_with_response(self) -> None:
        if not self._finishing and self.request is not None:
            self._finishing = True
            self.request.add_response_callback(self._finish)

    def _finish(self, request: Request, response: Response) -> None:
        """Write what changed (at most one statement) and set the cookie.

        Runs once: from :func:`session_tween_factory` (so a store error
        reaches the app's exception views), else as a response callback.
        """
        if self._finished:
            return
        self._finished = True
        self.request = None  # the session outlives the request in some apps
        if not self.options.set_on_exception and getattr(request, "exception", None) is not None:
            return
        if self._payload is not None:
            # This response was made with a stored session's data: a shared
            # cache must not serve it to a request with another cookie.
            vary_on_cookie(response)
        if not self:
            if self._id is not None:  # emptied by the app: nothing left to keep
                self.store.delete(self._id)
                self._id = None
                self._delete_cookie = True
            if self._delete_cookie:
                self.cookie.delete(response)
            return
        payload = self.store.serialize(self)  # SessionTooLarge before any write
        send_cookie = self._resign or self.cookie.max_age is not None
        if self._id is None:
            self._id = new_session_id()
            self.store.save_serialized(self._id, payload, self._ttl)
            send_cookie = True
        elif payload != self._payload or self._refresh:
            # Only a live row is written: a session that another request
            # invalidated (a logout) or that expired meanwhile stays gone.
            if payload != self._payload:
                alive = self.store.replace_serialized(self._id, payload, self._ttl)
            else:
                alive = self.store.touch(self._id, self._ttl)
            if not alive:
                self._id = None
                self.cookie.delete(response)
                return
        elif not self._resign:
            return  # read only: nothing to write, nothing to send
        self._payload = payload
        if send_cookie:
            self.cookie.set(response, self._id)


def PGStoreSessionFactory(store: PGStore, secret: str | Sequence[str], **options: Any) -> ISessionFactory:
    """A Pyramid session factory storing sessions in ``store``.

    :param store: the :class:`PGStore` holding the sessions.
    :param secret: the signing secret, or several (whitespace-separated in one
        string, or a sequence): the first signs, all verify. Each is at least
        32 bytes.
    :param options: the cookie's attributes (``cookie_name``, ``max_age``,
        ``path``, ``domain``, ``secure``, ``httponly``, ``samesite``: see
        :class:`~pyramid_pgstore.options.CookieOptions`) and the session's
        (``timeout``, ``reissue_time``, ``set_on_exception``: see
        :class:`~pyramid_pgstore.options.SessionOptions`), with the same
        defaults, checks and conversions as the ``pgstore.*`` settings.
    :raises OptionError: a value is refused; the error names it.
    """
    cookie_fields = CookieOptions.field_names()
    cookie = CookieOptions(secret=secret, **{k: v for k, v in options.items() if k in cookie_fields})
    session = SessionOptions(**{k: v for k, v in options.items() if k not in cookie_fields})
    return session_factory(store, cookie, session)


def session_factory(store: PGStore, cookie: CookieOptions, session: SessionOptions) -> ISessionFactory:
    """:func:`PGStoreSessionFactory` for options already built (what
    ``config.include`` uses)."""
    attributes = {
        "store": store,
        "cookie": SessionCookie(cookie),
        "options": session,
        "_ttl": session.lifetime(cookie),
        "_reissue_time": session.refresh_after(cookie),
    }
    return provider(ISessionFactory)(type("PGStoreSession", (PGStoreSession,), attributes))


def session_tween_factory(
    handler: Callable[[Request], Response], registry: Any
) -> Callable[[Request], Response]:
    """Finish the session once the response is known, inside the tween chain.

    Placed over Pyramid's exception view tween, it sees the final response
    whether the view returned or raised (``raise HTTPFound(...)`` after a
    login). If the final write fails (:class:`~pyramid_pgstore.StoreUnavailable`,
    :class:`~pyramid_pgstore.SessionTooLarge`), the app's exception view for
    it makes the response (a 503, say); with none, the error propagates.

    ``config.include('pyramid_pgstore')`` adds it; without it the session is
    finished by a response callback, outside the exception views.
    """

    def finish_session(request: Request) -> Response:
        response = handler(request)
        session = request.__dict__.get("session")  # only if the view used it
        if isinstance(session, PGStoreSession) and session._finishing:
            try:
                session._finish(request, response)
            except Exception:
                return request.invoke_exception_view(sys.exc_info(), reraise=True)
        return response

    return finish_session
