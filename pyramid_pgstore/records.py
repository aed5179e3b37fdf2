"""What the store takes and hands back (a session to write, a loaded
session, a session listed for its user), and what a row records of its client."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

# A storage key: the SHA-256 of a session id, in lowercase hex.
_STORAGE_KEY = re.compile(r"[0-9a-f]{64}\Z")
_MAX_IP = 64
_MAX_USER_AGENT = 512


def storage_key(session_id: str) -> str:
    """The key a session id is stored under: its SHA-256, in hex.

    A copy of the table (a backup, a leak) therefore holds no usable cookie.
    """
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def is_storage_key(text: Any) -> bool:
    return isinstance(text, str) and _STORAGE_KEY.match(text) is not None


# A user id a text column cannot hold as it is (NUL, a lone surrogate) is
# stored JSON-escaped behind this mark; so is one that starts with the mark,
# so that no two user ids are ever stored alike.
_ESCAPED = "\x01"


def userid_column(userid: Any) -> str | None:
    """What the ``userid`` column holds for ``userid`` (compared as text)."""
    if userid is None:
        return None
    text = str(userid)
    if "\x00" in text or text.startswith(_ESCAPED) or not _encodable(text):
        return _ESCAPED + json.dumps(text)[1:-1]
    return text


def userid_from_column(column: str | None) -> str | None:
    """The user id that :func:`userid_column` stored as ``column``."""
    if column is not None and column.startswith(_ESCAPED):
        return json.loads(f'"{column[len(_ESCAPED) :]}"')
    return column


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class SessionRecord:
    """One stored session, as :meth:`PGStore.load` returns it (Go's PGSession).

    ``key`` is the stored key: the SHA-256 of the session id, never the id.
    ``loaded_at`` is the database's time when the row was read, so that
    ``expires_on - loaded_at`` is the time the session has left.
    ``version`` identifies this version of the row: a write made with it
    succeeds only if nobody wrote the row since. ``lifetime`` is the
    session's own idle timeout in seconds (``set_expiry()``; 0: the
    factory's, with a browser-session cookie; None: the factory's).
    ``read_at`` is the store's monotonic clock just before the row was asked
    for (None: unknown), so that a write can tell whether the row may have
    expired since.
    """

    key: str
    data: dict[str, Any]
    created_on: datetime
    modified_on: datetime
    expires_on: datetime
    loaded_at: datetime
    payload: str = field(repr=False, compare=False, default="")
    version: str | None = field(repr=False, compare=False, default=None)
    lifetime: float | None = None
    read_at: float | None = field(repr=False, compare=False, default=None)

    @property
    def age(self) -> float:
        """Seconds since the session was created, by the database's clock."""
        return (self.loaded_at - self.created_on).total_seconds()

    @classmethod
    def of(
        cls,
        key: str,
        data: dict[str, Any],
        created_on: datetime,
        modified_on: datetime,
        expires_on: datetime,
        loaded_at: datetime,
        payload: str,
        version: str | None,
        lifetime: float | None,
        read_at: float | None,
    ) -> SessionRecord:
        """A record of these fields, every one given: what the constructor
        makes, without its ``object.__setattr__`` for each field (a frozen
        dataclass's), for the store, which makes one or two every request
        (16k instructions against 7k)."""
        record = object.__new__(cls)
        record.__dict__.update(
            key=key,
            data=data,
            created_on=created_on,
            modified_on=modified_on,
            expires_on=expires_on,
            loaded_at=loaded_at,
            payload=payload,
            version=version,
            lifetime=lifetime,
            read_at=read_at,
        )
        return record


class Draft(NamedTuple):
    """A session as a request would store it: its data, that data encoded
    (:meth:`PGStore.draft`), and what the row records beside it (a named
    tuple: the store makes one for every write).

    ``owner_key`` is the key whose value names the session's user (the row's
    ``userid``); ``ip`` and ``user_agent`` describe the client (None: not
    recorded); ``lifetime`` is the session's own (see :class:`SessionRecord`).
    ``claim`` lists keys whose value, or absence, this request
    decides even where it did not change them: a merge with a concurrent
    write takes them from this draft (a CSRF token after a login).
    """

    data: Mapping[str, Any]
    payload: str
    owner_key: str = "auth.userid"
    ip: str | None = None
    user_agent: str | None = None
    claim: frozenset[str] = frozenset()
    lifetime: float | None = None

    @property
    def userid(self) -> str | None:
        """The session's user, as the ``userid`` column holds it (text), or None."""
        value = self.data.get(self.owner_key)
        return None if value is None else str(value)

    def merged(self, data: dict[str, Any], payload: str) -> Draft:
        """This draft with other data (its changes put on another request's)."""
        return self._replace(data=data, payload=payload)


class Lookup(NamedTuple):
    """What the store holds for a session id: the live session, or why not
    (a named tuple: the store makes one for every request with a cookie).

    ``ended``: the session was ended a moment ago (logged out, or given a new
    id) by another request: this request started with a cookie that the
    browser may already have replaced, so it must leave the cookie alone.
    ``unreadable``: the row is there but no longer deserializes (it is left
    alone, for someone to look at).
    """

    record: SessionRecord | None
    ended: bool = False
    unreadable: bool = False


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One live session of a user, for a "your devices" page.

    ``handle`` identifies the session to :func:`pyramid_pgstore.revoke_session`
    and :meth:`PGStore.delete_session_of`; it is the stored key (a hash of
    the id), so it can be shown to the user but never used as a cookie.
    ``ip`` and ``user_agent`` are what the client sent when the row was last
    written (None when not tracked). ``last_seen`` moves at each write and
    expiry refresh, so it is exact to within ``reissue_time``. ``lifetime``
    is the session's own idle timeout in seconds, set by ``set_expiry()``
    ("keep me signed in"; 0: the default, with a browser-session cookie;
    None: the default). ``current`` is True for the session of the request
    that asked.
    """

    handle: str
    userid: str
    created_on: datetime
    last_seen: datetime
    expires_on: datetime
    ip: str | None
    user_agent: str | None
    lifetime: float | None = None
    current: bool = False


def client_fields(request: Any) -> dict[str, str | None]:
    """The ``ip`` and ``user_agent`` a row records for ``request`` (None:
    not tracked): ``request.client_addr`` and the User-Agent header, bounded
    and without NUL (which a ``text`` column cannot hold). A request that
    has neither (``pyramid.testing.DummyRequest``) records neither."""
    if request is None:
        return {"ip": None, "user_agent": None}
    return {
        "ip": _text(getattr(request, "client_addr", None), _MAX_IP),
        "user_agent": _text(getattr(request, "user_agent", None), _MAX_USER_AGENT),
    }


def _text(value: Any, limit: int) -> str | None:
    return None if value is None else str(value).replace("\x00", "")[:limit]
