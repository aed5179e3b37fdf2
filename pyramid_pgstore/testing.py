"""Hooks for tests: a clock to move, and the stores a process has built.

``pytest_pgstore`` uses these; an app's own test helpers may too. Nothing
else in production sets them.

* The store's notion of "now" is the database clock plus :func:`clock_offset`
  seconds (0 outside tests). Every timestamp the store writes or compares is
  computed by PostgreSQL, so all app servers agree on expiry whatever their
  own clocks say; the offset lets a test expire sessions without sleeping.
* Every store registers itself, so a test fixture can close the stores an
  app built on the test's database and never closed (:func:`close_stores`).
* A test plugin may change a store's table once the store has prepared or
  checked it, before its first statement (:data:`table_hooks`:
  ``pytest_pgstore --pgstore-citus`` distributes it on Citus).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from typing import Any, Protocol

# How a table hook runs SQL: on the store's own connections, in autocommit
# mode; returns the rows of the last statement (none: an empty list).
Query = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]


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


# Each is called as ``hook(query, quoted_table)`` after a store has prepared
# or checked its table, and returns whether it changed the table (the store
# then looks at it again). Empty in production: the store checks only that.
table_hooks: list[Callable[[Query, str], bool]] = []


def table_ready(query: Query, quoted_table: str) -> bool:
    """Run the :data:`table_hooks`; True if one of them changed the table."""
    changed = False
    for hook in table_hooks:
        changed = hook(query, quoted_table) or changed
    return changed
