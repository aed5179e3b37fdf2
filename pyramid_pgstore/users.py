"""A session's user: their devices, signing one out, signing out everywhere else.

Each save records the session's owner (the value under
``pgstore.userid_key``, what Pyramid's ``remember()`` writes) in the row's
indexed ``userid`` column, so these are one statement each. They act on
the user of the request's own session; an anonymous request has no
sessions to list or end. For scripts and admin tools without a request, the
store has :meth:`~pyramid_pgstore.PGStore.sessions_of` and
:meth:`~pyramid_pgstore.PGStore.delete_sessions_of`.
"""

from __future__ import annotations

import dataclasses

from pyramid.request import Request

from .records import SessionInfo, is_storage_key
from .session import PGStoreSession


def _session(request: Request) -> PGStoreSession:
    session = request.session
    if not isinstance(session, PGStoreSession):
        raise TypeError("request.session is not a pyramid_pgstore session (is the factory configured?)")
    return session


def list_sessions(request: Request) -> list[SessionInfo]:
    """The live sessions of the request's user, most recently active first
    (empty for an anonymous request). One statement."""
    session = _session(request)
    if session.owner is None:
        return []
    current = session.storage_key
    found = session.store.sessions_of(session.owner)
    return [dataclasses.replace(info, current=info.handle == current) for info in found]


def revoke_session(request: Request, handle: str) -> bool:
    """End one of the request's user's sessions, by its
    :attr:`~pyramid_pgstore.SessionInfo.handle`. False, and nothing done,
    for a handle of another user's session, an unknown or malformed one, or
    an anonymous request. Revoking the request's own session is
    ``invalidate()``. A revoked session is dead at once: a request of it
    already in flight cannot write it back. Notifies
    :class:`~pyramid_pgstore.SessionEnded` (``"revoked"``)."""
    session = _session(request)
    owner = session.owner
    if owner is None or not is_storage_key(handle):
        return False
    if handle == session.storage_key:
        session.invalidate()
        return True
    return session.store.delete_session_of(owner, handle, request=request)


def revoke_other_sessions(request: Request) -> int:
    """End every session of the request's user but the request's own (after
    a password change, say); return how many ended. One statement. Each is
    a :class:`~pyramid_pgstore.SessionEnded` (``"revoked"``)."""
    session = _session(request)
    if session.owner is None:
        return 0
    return session.store.delete_sessions_of(session.owner, keep=session.session_id, request=request)


def renew_session(request: Request) -> None:
    """Give the request's session a new id now, keeping its data; the old id
    is dead at once (one statement). What to do on a privilege change that
    does not change the user (``pgstore.renew_on_login`` already renews when
    it does)."""
    _session(request).renew()
