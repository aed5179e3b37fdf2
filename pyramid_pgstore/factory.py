"""Session factories: the options captured once, in a session class of their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyramid.interfaces import ISessionFactory
from zope.interface import provider

from .cookie import SessionCookie
from .lifetime import Lifetime
from .options import CookieOptions, SessionOptions
from .session import PGStoreSession
from .store import PGStore


def PGStoreSessionFactory(store: PGStore, secret: str | Sequence[str], **options: Any) -> ISessionFactory:
    """A Pyramid session factory storing sessions in ``store``.

    :param store: the :class:`PGStore` holding the sessions.
    :param secret: the signing secret, or several (whitespace-separated in one
        string, or a sequence): the first signs, all verify. Each is at least
        32 bytes.
    :param options: the cookie's attributes (``cookie_name``, ``max_age``,
        ``path``, ``domain``, ``secure``, ``httponly``, ``samesite``: see
        :class:`~pyramid_pgstore.options.CookieOptions`) and the session's
        (``timeout``, ``reissue_time``, ``set_on_exception``, ``userid_key``,
        ``renew_on_login``, ``track_client``, ``max_lifetime``: see
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
        "lifetime": Lifetime(
            session.lifetime(cookie),
            session.refresh_after(cookie),
            session.max_lifetime,
            session.reissue_time,
        ),
    }
    return provider(ISessionFactory)(type("PGStoreSession", (PGStoreSession,), attributes))
