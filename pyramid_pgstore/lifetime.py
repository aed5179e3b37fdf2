"""How long a stored session lives: the idle timeout, refreshes, the absolute cap."""

from __future__ import annotations

from dataclasses import dataclass

from .records import SessionRecord


@dataclass(frozen=True)
class Lifetime:
    """A session factory's lifetimes, in seconds, captured once.

    :param ttl: how long a stored session lives without use (None: forever).
    :param refresh_after: a read or write moves the expiry forward at most
        this often (None: never).
    :param cap: how long after its creation a session ends however active
        (``max_lifetime``; None: no cap).
    """

    ttl: float | None
    refresh_after: float | None
    cap: float | None

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
        ttl = self.ttl_at(record.age)
        if ttl is None or self.refresh_after is None:
            return False
        remaining = (record.expires_on - record.loaded_at).total_seconds()
        return ttl - remaining >= self.refresh_after
