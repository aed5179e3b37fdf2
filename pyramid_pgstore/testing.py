"""Hooks for tests: a clock to move, and the stores a process has built.

``pytest_pgstore`` uses these; an app's own test helpers may too. Nothing
else in production sets them.

* The store's notion of "now" is the database clock plus :func:`clock_offset`
  seconds (0 outside tests). Every timestamp the store writes or compares is
  computed by PostgreSQL, so all app servers agree on expiry whatever their
  own clocks say; the offset lets a test expire sessions without sleeping.
* Every store registers itself, so a test fixture can close the stores an
  app built on the test's database and never closed (:func:`close_stores`).
"""

from __future__ import annotations

import weakref
from collections.abc import Collection
from typing import Any, Protocol


class _Closable(Protocol):
    dsn: str | None

    def close(self) -> None: ...


class _Clock:
    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0.0  # seconds added to the database's now()


clock = _Clock()
_LIVE_STORES: weakref.WeakSet[Any] = weakref.WeakSet()


def advance_clock(seconds: float) -> None:
    """Make it ``seconds`` later for every store in this process."""
    clock.offset += seconds


def reset_clock() -> None:
    """Back to the database's own time."""
    clock.offset = 0.0


def clock_offset() -> float:
    """Seconds added to the database clock so far."""
    return clock.offset


def track_store(store: _Closable) -> None:
    """Called by every store when it is built (weakly referenced)."""
    _LIVE_STORES.add(store)


def close_stores(dsns: Collection[str]) -> int:
    """Close every store of this process whose DSN is one of ``dsns``;
    return how many were closed."""
    closed = 0
    for store in list(_LIVE_STORES):
        if store.dsn in dsns:
            store.close()
            closed += 1
    return closed
