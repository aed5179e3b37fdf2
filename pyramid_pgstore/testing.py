"""Hooks for tests: the stores a process has built, and a clock to move for them.

``pytest_pgstore`` uses these; an app's own test helpers may too. A store
touches this module when it is built and when it first looks at its table
(at its first statement, with ``create_table = false``), never otherwise
while serving a request.

* Every store registers itself when built (weakly referenced), so that a test
  fixture can close the stores an app built on the test's database and never
  closed (:func:`close_stores`).
* Every timestamp the store writes or compares is computed by PostgreSQL, so
  all app servers agree on expiry whatever their own clocks say.
  :func:`advance_clock` makes every store of the process compute "now" as the
  database's clock plus an offset (:meth:`PGStore.set_clock_offset
  <pyramid_pgstore.PGStore.set_clock_offset>`: its statements are rebuilt
  with the offset written in, once per move), so that a test can expire
  sessions without sleeping; a store built while the clock is moved starts
  with the offset.
* :func:`session_for` and :func:`finish_request` give a view unit-tested
  with ``pyramid.testing.DummyRequest`` a real session, and do to it what
  the end of a real request does.
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


class _TestableStore(Protocol):
    dsn: str | None

    def close(self) -> None: ...

    def set_clock_offset(self, seconds: float) -> None: ...


_LIVE_STORES: weakref.WeakSet[Any] = weakref.WeakSet()
_offset = 0.0  # seconds added to the database's now() by every store of this process


def track_store(store: _TestableStore) -> None:
    """Called by every store when it is built: registered (weakly), and
    given the clock's offset if a test has moved it."""
    _LIVE_STORES.add(store)
    if _offset:
        store.set_clock_offset(_offset)


def advance_clock(seconds: float) -> None:
    """Make it ``seconds`` later for every store in this process."""
    _move_to(_offset + seconds)


def reset_clock() -> None:
    """Back to the database's own time."""
    _move_to(0.0)


def clock_offset() -> float:
    """Seconds added to the database clock so far."""
    return _offset


def _move_to(offset: float) -> None:
    global _offset
    _offset = offset
    for store in list(_LIVE_STORES):
        store.set_clock_offset(offset)


def session_for(request: Any) -> Any:
    """Give ``request`` (a ``pyramid.testing.DummyRequest``, whose session is
    a ``DummySession``) the session the registry's factory makes, as a real
    request's first ``request.session`` would (reading its cookie: one
    statement if it names a session); return it."""
    from pyramid.interfaces import ISessionFactory

    request.session = request.registry.getUtility(ISessionFactory)(request)
    return request.session


def finish_request(request: Any, response: Any = None) -> Any:
    """Do to ``request``'s session what the end of a real request does: the
    write (at most one statement) and the cookie on ``response``
    (``request.response`` by default), events included; return the response.
    Unlike a real request's response callbacks, only the session is finished."""
    response = request.response if response is None else response
    session = request.session
    session.send(session.finish(request), response)
    session.announce()
    return response


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
