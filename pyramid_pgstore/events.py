"""Events: a session changing hands, a session ending.

Subscribe with Pyramid's ``config.add_subscriber(handler, SessionOwnerChanged)``
or ``@subscriber(SessionEnded)``. Each is notified through the registry once
the write it reports is stored: at the end of the request, or, under
pyramid_tm with ``pgstore.transaction = auto`` or ``shared``, after the
transaction commits, and never for a write that was rolled back. A logout
stands whatever the transaction does, and so does its event.

A subscriber runs in the request's thread after the write. What it raises
propagates, as any subscriber's does, except under pyramid_tm, where it runs
in an after-commit hook and the transaction package logs it; either way the
session is stored already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SessionOwnerChanged:
    """A session's user changed, and the change is stored: a login
    (``previous_userid`` None), a switch of user, or a logout by ``forget()``
    (``userid`` None; an ``invalidate()`` is a :class:`SessionEnded`).

    ``handle`` is the session's storage key after the change (a new one when
    ``pgstore.renew_on_login`` gave it a new id): what
    :func:`~pyramid_pgstore.list_sessions` reports as
    :attr:`~pyramid_pgstore.SessionInfo.handle`, safe to log or show. User ids
    are text, as the ``userid`` column holds them.
    """

    request: Any
    handle: str
    userid: str | None
    previous_userid: str | None


@dataclass(frozen=True)
class SessionEnded:
    """A stored session ended, and the end is stored.

    ``reason``: ``"invalidated"`` (``request.session.invalidate()``),
    ``"revoked"`` (:func:`~pyramid_pgstore.revoke_session`,
    :func:`~pyramid_pgstore.revoke_other_sessions`,
    :meth:`PGStore.delete_sessions_of() <pyramid_pgstore.PGStore.delete_sessions_of>`,
    :meth:`PGStore.delete_session_of() <pyramid_pgstore.PGStore.delete_session_of>`)
    or ``"limit"`` (``pgstore.max_sessions_per_user``). ``request`` is the
    request that ended it (None for a store method called without one);
    ``userid`` the session's user, or None.
    """

    request: Any
    handle: str
    userid: str | None
    reason: str
