"""The session as a ``dict``: which methods change it, flash queues, the CSRF token.

Methods that change the session are wrapped by :func:`_changes`, which calls
``changed()`` first; every other dict method only reads. The storage is in
:class:`pyramid_pgstore.session.PGStoreSession`, which subclasses this and
says when the session changed hands: then the CSRF token it had is replaced.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from .merge import FLASH_PREFIX

F = TypeVar("F", bound=Callable[..., Any])

CSRF_KEY = "_csrft_"  # the key Pyramid's own sessions keep the token under


def _changes(method: F) -> F:
    """Mark a dict method as one that changes the session (to be saved)."""

    def changing(self: SessionDict, *args: Any, **kwargs: Any) -> Any:
        self.changed()
        return method(self, *args, **kwargs)

    changing.__name__ = method.__name__
    changing.__doc__ = method.__doc__
    return changing  # type: ignore[return-value]


class SessionDict(dict):
    """A dict that says when it changes, with ``ISession``'s flash and CSRF methods."""

    def changed(self) -> None:
        """Mark the session as changed (subclasses save it)."""
        raise NotImplementedError

    __setitem__ = _changes(dict.__setitem__)
    __delitem__ = _changes(dict.__delitem__)
    clear = _changes(dict.clear)
    pop = _changes(dict.pop)
    popitem = _changes(dict.popitem)
    setdefault = _changes(dict.setdefault)
    update = _changes(dict.update)
    __ior__ = _changes(dict.__ior__)

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        storage = self.setdefault(FLASH_PREFIX + queue, [])
        if allow_duplicate or msg not in storage:
            storage.append(msg)

    def pop_flash(self, queue: str = "") -> list[Any]:
        return self.pop(FLASH_PREFIX + queue, [])

    def peek_flash(self, queue: str = "") -> list[Any]:
        return self.get(FLASH_PREFIX + queue, [])

    def new_csrf_token(self) -> str:
        token = secrets.token_hex(20)
        self[CSRF_KEY] = token
        return token

    def get_csrf_token(self) -> str:
        token = self.get(CSRF_KEY)
        if token is None or self._csrf_token_stale(token):
            token = self.new_csrf_token()
        return token

    # -- a change of owner (a login) -----------------------------------------

    _read_token: str | None = None  # the CSRF token of the session as read from storage

    def _new_owner_since_read(self) -> bool:
        """Whether the session changed hands (a login, a logout) since it was read."""
        return False

    def _csrf_token_stale(self, token: str) -> bool:
        # Whoever planted a session before its login (fixation) knows its
        # CSRF token: a new user gets a new one, as Django's login() does.
        return self._new_owner_since_read() and token == self._read_token

    def _drop_stale_csrf_token(self) -> None:
        """Forget a stale token: the next get_csrf_token() makes a new one."""
        if CSRF_KEY in self and self._csrf_token_stale(self[CSRF_KEY]):
            dict.pop(self, CSRF_KEY)

    def _without_foreign_csrf_token(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (this session merged into another request's write)
        without a CSRF token that this request does not hold, once the owner
        changed: another request on the pre-login id may have made it."""
        if self._new_owner_since_read() and data.get(CSRF_KEY) not in (None, self.get(CSRF_KEY)):
            return {key: value for key, value in data.items() if key != CSRF_KEY}
        return data
