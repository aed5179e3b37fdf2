"""PGStore: session rows in a PostgreSQL table, the Python form of Go's pgstore.

Every public method is one SQL statement, so one round trip, unless its
docstring says otherwise (with ``prepare_statements``, the first use of a
statement on a connection adds its ``PREPARE``). Statements run in autocommit
mode on a pooled connection; a connection found broken is replaced and the
statement, which is always idempotent here, is retried once. The SQL itself
is in :mod:`pyramid_pgstore.sql`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
from psycopg2.extensions import cursor as Cursor
from psycopg2.pool import AbstractConnectionPool

from . import testing
from ._prepared import PreparedStatements
from .cleanup import DEFAULT_BATCH_SIZE, Cleaner, CleanupHandle, run_cleanup
from .dsn import connect_kwargs
from .errors import StoreUnavailable
from .options import StoreOptions
from .pool import BorrowedPool, Checkout, OwnedPool
from .serializer import JSONSerializer, Serializer, deserialize, serialize
from .sql import Statement, Statements, interval

log = logging.getLogger("pyramid_pgstore")

T = TypeVar("T")

_LOCK_POLL = 0.5  # seconds between tries when waiting for another cleaner


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One stored session, as :meth:`PGStore.load` returns it (Go's PGSession).

    ``key`` is the stored key: the SHA-256 of the session id, never the id.
    ``loaded_at`` is the database's time when the row was read, so that
    ``expires_on - loaded_at`` is the time the session has left.
    """

    key: str
    data: dict[str, Any]
    created_on: datetime
    modified_on: datetime
    expires_on: datetime
    loaded_at: datetime
    payload: str = field(repr=False, compare=False, default="")


def storage_key(session_id: str) -> str:
    """The key a session id is stored under: its SHA-256, in hex.

    A copy of the table (a backup, a leak) therefore holds no usable cookie.
    """
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class PGStore:
    """Sessions in a PostgreSQL table, reached through a psycopg2 pool.

    ``PGStore(dsn, ...)`` owns a ``ThreadedConnectionPool`` (built lazily in
    each process); :meth:`from_pool` borrows the caller's pool instead.
    Thread-safe: one store serves every thread of an app.

    :param dsn: libpq connection string or URL.
    :param options: a :class:`~pyramid_pgstore.options.StoreOptions`;
        keyword arguments naming its fields (``table``, ``pool_min``,
        ``pool_max``, ``pool_timeout``, ``statement_timeout``,
        ``synchronous_commit``, ``prepare_statements``, ``create_table``,
        ``max_length``, ``serializer``, ``cleanup_interval``) set or override
        them. Each is checked; a bad one raises
        :class:`~pyramid_pgstore.options.OptionError` (a ValueError) naming it.
    """

    dsn: str | None
    options: StoreOptions

    def __init__(self, dsn: str, *, options: StoreOptions | None = None, **overrides: Any) -> None:
        options = StoreOptions.build(options, overrides)
        connect = connect_kwargs(dsn, options.pool_timeout)
        checkout = OwnedPool(options.pool_min, options.pool_max, options.pool_timeout, connect)
        self.dsn = dsn
        self._open(checkout, options)
        # Nothing stays open from construction: a server that forks workers
        # now gives them no shared socket. Each process connects on first use.
        checkout.release()

    @classmethod
    def from_pool(
        cls, pool: AbstractConnectionPool, *, options: StoreOptions | None = None, **overrides: Any
    ) -> PGStore:
        """A store on the caller's psycopg2 pool (Go's NewPGStoreFromPool).

        Takes the same options, but ``pool_min`` and ``pool_max``: the pool
        is sized by its owner. :meth:`close` leaves that pool open.
        Connections are borrowed in autocommit mode and given back with
        their own setting restored.
        """
        sizing = sorted({"pool_min", "pool_max"} & overrides.keys())
        if sizing:
            raise TypeError(f"from_pool() takes no {', '.join(sizing)}: the borrowed pool has its own size")
        options = StoreOptions.build(options, overrides)
        store = cls.__new__(cls)
        store.dsn = None
        store._open(BorrowedPool(pool, options.pool_timeout), options)
        return store

    def _open(self, checkout: Checkout, options: StoreOptions) -> None:
        self.options = options
        self.table = options.table
        self.max_length = options.max_length
        self.serializer: Serializer = options.serializer or JSONSerializer()
        self._plain_sql = Statements(
            options.table,
            options.synchronous_commit,
            options.statement_timeout,
            prepare=options.prepare_statements,
        )
        self._shifted: Statements | None = None  # built when a test first moves the clock
        self._prepared = PreparedStatements()
        self._checkout = checkout
        self._queries = 0
        self._cleanups: list[CleanupHandle] = []
        testing.track_store(self)
        if options.create_table:
            self._create_table()
        if options.cleanup_interval:
            self.cleanup(options.cleanup_interval)

    # -- statements ---------------------------------------------------------

    @property
    def _sql(self) -> Statements:
        if not testing.clock.offset:
            return self._plain_sql
        if self._shifted is None:
            # While a test moves the clock: text statements, whatever the setting.
            options = self.options
            self._shifted = Statements(
                options.table, options.synchronous_commit, options.statement_timeout, Statements.SHIFTED_NOW
            )
        return self._shifted

    def _run(self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T]) -> T:
        """Run one statement and return ``result(cursor)``.

        A connection that breaks under it (server restart, network cut,
        ``pg_terminate_backend``) is discarded and the statement retried once
        on a new connection: every statement here is idempotent.
        """
        params["offset"] = testing.clock.offset
        for attempt in (1, 2):
            conn = self._checkout.getconn()
            broken = False
            try:
                with conn.cursor() as cur:
                    if type(sql) is str:
                        self._queries += 1
                        cur.execute(sql, params)
                    else:
                        self._queries += self._prepared.execute(cur, sql, params)
                    return result(cur)
            except psycopg2.errors.QueryCanceled as exc:
                raise StoreUnavailable(f"the database canceled the statement: {exc}".strip()) from exc
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if not conn.closed:  # the statement failed, the connection is fine
                    raise StoreUnavailable(f"the database refused the statement: {exc}".strip()) from exc
                broken = True
                if attempt == 2:
                    raise StoreUnavailable(f"lost the database connection twice: {exc}".strip()) from exc
                log.warning("database connection lost (%s); retrying", str(exc).strip())
            finally:
                self._checkout.putconn(conn, broken)
        raise AssertionError("unreachable")

    def _create_table(self) -> None:
        # Looking first means an existing table needs no CREATE privilege.
        params = {"table": self._sql.quoted_table}
        if not self._run(self._sql.regclass, params, _scalar):
            self._run(self._sql.create, params, _nothing)
            log.info("created table %s", self.table)

    # -- rows ---------------------------------------------------------------

    def serialize(self, data: Mapping[str, Any]) -> str:
        """Serialize session data, enforcing ``max_length``; no database work.

        :raises SessionTooLarge: the result is over ``max_length`` bytes.
        :raises TypeError: a value cannot be serialized; the message names its key.
        """
        return serialize(self.serializer, data, self.max_length)

    def load(self, session_id: str) -> SessionRecord | None:
        """The live session stored for ``session_id``, or None.

        An expired row is never returned, even before cleanup removes it. A
        row that no longer deserializes is logged and treated as missing (it is
        left in place until it expires).
        """
        key = storage_key(session_id)
        row = self._run(self._sql.load, {"key": key}, _one)
        if row is None:
            return None
        payload, created_on, modified_on, expires_on, loaded_at = row
        if expires_on <= loaded_at:  # both from the database's clock
            return None
        try:
            data = deserialize(self.serializer, payload)
        except ValueError as exc:
            log.warning("stored session %s… does not deserialize (%s)", key[:12], exc)
            return None
        return SessionRecord(key, data, created_on, modified_on, expires_on, loaded_at, payload)

    def save(self, session_id: str, data: Mapping[str, Any], ttl: float | None) -> None:
        """Insert or replace the session, live for ``ttl`` seconds (None: forever).

        :raises SessionTooLarge: before any database work; the stored copy is untouched.
        """
        self.save_serialized(session_id, self.serialize(data), ttl)

    def save_serialized(self, session_id: str, payload: str, ttl: float | None) -> None:
        """:meth:`save` for a payload already made by :meth:`serialize`."""
        sql = self._sql
        params = {"key": storage_key(session_id), "data": payload, "ttl": interval(ttl)}
        self._run(sql.save if ttl is not None else sql.save_forever, params, _nothing)

    def replace_serialized(self, session_id: str, payload: str, ttl: float | None) -> bool:
        """Replace the data of a live session; returns False, writing nothing,
        when it is gone (deleted by another request, or expired).

        What the session factory uses for a session it loaded, so that a
        request that started before a logout cannot bring the session back.
        """
        sql = self._sql
        params = {"key": storage_key(session_id), "data": payload, "ttl": interval(ttl)}
        return self._run(sql.replace if ttl is not None else sql.replace_forever, params, _rowcount) > 0

    def touch(self, session_id: str, ttl: float | None) -> bool:
        """Move the expiry to ``ttl`` seconds from now; data is untouched.

        Returns False when there is no live session to refresh.
        """
        sql = self._sql
        params = {"key": storage_key(session_id), "ttl": interval(ttl)}
        return self._run(sql.touch if ttl is not None else sql.touch_forever, params, _rowcount) > 0

    def delete(self, session_id: str) -> bool:
        """Delete the session; returns whether a row was there."""
        return self._run(self._sql.delete, {"key": storage_key(session_id)}, _rowcount) > 0

    # -- expired rows -------------------------------------------------------

    def delete_expired(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Delete expired sessions and return how many went (Go's DeleteExpired).

        Works in batches of ``batch_size`` rows, one statement (and one short
        transaction) each, until a batch comes back short.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total = 0
        while True:
            deleted = self.delete_expired_batch(batch_size)
            total += deleted
            if deleted < batch_size:
                return total

    def delete_expired_batch(self, limit: int) -> int:
        """Delete up to ``limit`` expired rows in one short transaction,
        skipping rows a request is writing; return how many went."""
        return self._run(self._sql.delete_expired_batch, {"limit": limit}, _rowcount)

    @contextmanager
    def cleanup_lock(self, wait: bool = False, stop: threading.Event | None = None) -> Iterator[bool]:
        """Hold the table's cleanup lock for the block; yield whether it was taken.

        One cleaner per table at a time, across processes: a transaction-level
        advisory lock in a transaction held open on a connection of its own
        (so it works through PgBouncer in transaction mode too).

        :param wait: poll until the lock is free (or ``stop`` is set) instead
            of yielding False at once.
        """
        sql = self._sql
        with self._checkout.dedicated() as conn:
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    cur.execute(sql.cleanup_lock_setup)
                    while True:
                        cur.execute(sql.try_cleanup_lock, {"table": sql.quoted_table})
                        (locked,) = cur.fetchone()
                        if locked or not wait or (stop is not None and stop.is_set()):
                            break
                        if stop is not None:
                            stop.wait(_LOCK_POLL)
                        else:
                            time.sleep(_LOCK_POLL)
                yield locked
            finally:
                conn.rollback()  # ends the transaction: releases the lock
                conn.autocommit = True

    def count_expired(self) -> int:
        """How many expired rows are waiting for cleanup (a full count)."""
        return self._run(self._sql.count_expired, {}, _scalar)

    def table_stats(self) -> dict[str, int]:
        """Live and expired row counts, table and index sizes in bytes."""
        live, expired, table_bytes, index_bytes = self._run(
            self._sql.table_stats, {"table": self._sql.quoted_table}, _one
        )
        return {"live": live, "expired": expired, "table_bytes": table_bytes, "index_bytes": index_bytes}

    # -- background cleanup -------------------------------------------------

    def run_cleanup(self, interval: float, stop_event: threading.Event) -> Iterator[int | Exception]:
        """Every ``interval`` seconds, delete expired sessions (Go's RunCleanup).

        Yields, for each run, the number deleted or the exception that run
        hit, until ``stop_event`` is set. Runs are batched and locked (see
        :mod:`pyramid_pgstore.cleanup`); waits are ``interval`` ± 10 %.
        """
        return run_cleanup(Cleaner(self), interval, stop_event)

    def cleanup(self, interval: float) -> CleanupHandle:
        """Start a daemon thread running :meth:`run_cleanup` (Go's Cleanup).

        Each run's error is logged and the thread goes on. :meth:`close` stops it.
        """
        handle = CleanupHandle(Cleaner(self), interval)
        self._cleanups.append(handle)
        return handle

    # -- lifecycle ------------------------------------------------------------

    def stats(self) -> dict[str, int | None]:
        """Counters since construction: statements run (round trips),
        connections opened (None for a borrowed pool), checkouts that had to
        wait, waits that timed out, broken connections discarded."""
        checkout = self._checkout
        return {
            "queries": self._queries,
            "connections_opened": checkout.opened,
            "waits": checkout.waits,
            "timeouts": checkout.timeouts,
            "discarded": checkout.discarded,
        }

    def close(self) -> None:
        """Stop background cleanups; close the pool if the store owns it."""
        for handle in self._cleanups:
            handle.stop()
        self._checkout.close()

    def __enter__(self) -> PGStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _one(cur: Cursor) -> tuple[Any, ...] | None:
    return cur.fetchone()


def _scalar(cur: Cursor) -> Any:
    return cur.fetchone()[0]


def _rowcount(cur: Cursor) -> int:
    return cur.rowcount


def _nothing(cur: Cursor) -> None:
    return None
