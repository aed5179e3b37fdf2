"""How long a stored session lives: the idle timeout, refreshes, the absolute cap,
and a session's own lifetime (``set_expiry``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .limits import MAX_SECONDS
from .records import SessionRecord


@dataclass(frozen=True)
class Lifetime:
    """A session factory's lifetimes, in seconds, captured once.

    :param ttl: how long a stored session lives without use (None: forever).
    :param refresh_after: a read or write moves the expiry forward at most
        this often (None: never).
    :param cap: how long after its creation a session ends however active
        (``max_lifetime``; None: no cap).
    :param reissue_time: the ``reissue_time`` setting (None: a tenth of the
        lifetime), for sessions with a lifetime of their own.
    """

    ttl: float | None
    refresh_after: float | None
    cap: float | None
    reissue_time: float | None = None

    def own(self, seconds: float | None) -> Lifetime:
        """These lifetimes for a session whose own idle timeout is ``seconds``
        (``set_expiry``; None or 0: the factory's). It refreshes at most every
        tenth of it, or every ``reissue_time`` if that is sooner; the cap stays."""
        if not seconds:
            return self
        tenth = seconds / 10
        refresh = tenth if self.reissue_time is None else min(self.reissue_time, tenth)
        return Lifetime(seconds, refresh, self.cap, self.reissue_time)

    def ttl_at(self, age: float) -> float | None:
        """The lifetime to write for a session ``age`` seconds old: the idle
        lifetime, but never past the cap."""
        if self.cap is None:
            return self.ttl
        left = max(self.cap - age, 0.0)
        return left if self.ttl is None else min(self.ttl, left)

    def ended(self, record: SessionRecord) -> bool:
        """The session is past its cap (its idle expiry the store checks itself)."""
        return self.cap is not None and record.age >= self.cap

    def due_for_refresh(self, record: SessionRecord) -> bool:
        """Its expiry is ``refresh_after`` or more behind where a write now would put it."""
        ttl = self.ttl if self.cap is None else self.ttl_at(record.age)
        if ttl is None or self.refresh_after is None:
            return False
        remaining = (record.expires_on - record.loaded_at).total_seconds()
        return ttl - remaining >= self.refresh_after


def expiry_seconds(value: Any) -> float | None:
    """``set_expiry()``'s argument as seconds: a number of seconds (more than
    0), 0, or None; a ``timedelta`` counts as its seconds.

    :raises TypeError: not a number (a bool, text, a datetime), naming it.
    :raises ValueError: negative, not finite, or beyond 10 years, naming it.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds: Any = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"set_expiry() takes seconds (a number), 0 or None, not {type(value).__name__} {value!r}"
        )
    else:
        seconds = value
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"set_expiry() takes 0 or more seconds, not {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"set_expiry({value!r}): at most {MAX_SECONDS} seconds (10 years)")
    return seconds


def cookie_max_age(seconds: float) -> int:
    """A cookie's Max-Age for a session's own lifetime: whole seconds, never 0
    (which would delete the cookie)."""
    return max(1, math.ceil(seconds))
