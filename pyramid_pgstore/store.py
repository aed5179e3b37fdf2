"""PGStore: session rows in a PostgreSQL table, the Python form of Go's pgstore.

Every public method is one SQL statement, so one round trip, unless its
docstring says otherwise (with ``prepare_statements``, the first use of a
statement on a connection adds its ``PREPARE``). Statements run in autocommit mode on a pooled
connection; a connection found broken is replaced and the statement, which is
always idempotent here, is retried once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import psycopg2
import psycopg2.errors
from psycopg2.extensions import cursor as Cursor
from psycopg2.extensions import parse_dsn
from psycopg2.pool import AbstractConnectionPool

from . import _clock
from ._prepared import Prepared, PreparedStatements
from .cleanup import DEFAULT_BATCH_SIZE, Cleaner, CleanupHandle, run_cleanup
from .errors import SessionTooLarge, StoreUnavailable
from .pool import BorrowedPool, Checkout, OwnedPool

log = logging.getLogger("pyramid_pgstore")

T = TypeVar("T")

DEFAULT_TABLE = "http_sessions"

# What runs a statement: its text, or a server-side prepared statement.
Statement = str | Prepared


class Serializer(Protocol):
    """Turns session data into text and back; ``loads`` raises ValueError on bad input."""

    def dumps(self, appstruct: Any) -> str | bytes: ...

    def loads(self, cstruct: str) -> Any: ...


class JSONSerializer:
    """The default serializer: compact JSON. Pickle is never used."""

    def dumps(self, appstruct: Any) -> str:
        return json.dumps(appstruct, separators=(",", ":"))

    def loads(self, cstruct: str) -> Any:
        return json.loads(cstruct)


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


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")


def _quoted_table(table: str) -> tuple[str, str]:
    """Return the quoted table name and the quoted name of its expiry index.

    ``table`` is ``name`` or ``schema.name``, each part a plain SQL identifier.
    Anything else is refused rather than quoted into a surprising name.
    """
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ValueError(
            f"invalid table name {table!r}: use 'name' or 'schema.name', each part "
            "a letter or underscore followed by up to 62 letters, digits, _ or $"
        )
    quoted = ".".join(f'"{part}"' for part in parts)
    index = f'"{parts[-1][:47]}_expires_on_idx"'
    return quoted, index


def storage_key(session_id: str) -> str:
    """The key a session id is stored under: its SHA-256, in hex.

    A copy of the table (a backup, a leak) therefore holds no usable cookie.
    """
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class _Statements:
    """The SQL text for one table, built once.

    ``now`` is the database clock: plain ``now()`` in production, and
    ``SHIFTED_NOW`` (now plus the test clock's offset) only while a test has
    moved the clock, so production statements carry no test-only arithmetic.
    By default every statement is sent as text, so PostgreSQL parses and
    plans it on each execution (server-side prepared statements do not
    survive PgBouncer's transaction mode; ``prepare=True`` makes the
    per-request ones :class:`~pyramid_pgstore._prepared.Prepared`). The text
    is kept cheap to plan, each choice measured (bench/README.rst, "Hot
    path"):

    * a session's row is found by its key alone. ``expires_on > now()`` in a
      WHERE clause makes the planner estimate it from the expiry index on
      every execution (10-15 us); the load compares the two timestamps it
      reads instead, and writes compare ``expires_on + interval '0 s'``, an
      expression the planner does not estimate;
    * lifetimes are passed as interval text (``'3600.000000 seconds'``),
      not multiplied (``%(ttl)s * interval '1 second'``) or built with
      ``make_interval``, whose operator and function lookups run each time;
    * a session without expiry has statements of its own, with
      ``'infinity'``, rather than a ``COALESCE`` in every statement.
    """

    SHIFTED_NOW = "(now() + %(offset)s * interval '1 second')"

    def __init__(
        self,
        table: str,
        synchronous_commit: bool = True,
        statement_timeout: float | None = None,
        now: str = "now()",
        prepare: bool = False,
    ) -> None:
        t, index = _quoted_table(table)
        self._prepare = prepare
        self.quoted_table = t
        # Settings for one statement's transaction only: several statements
        # in one query string run as one implicit transaction, so SET LOCAL
        # costs no round trip, never stays on the connection, and works
        # behind PgBouncer in transaction mode.
        limit = (
            ""
            if statement_timeout is None
            else f"SET LOCAL statement_timeout = {_milliseconds(statement_timeout)}; "
        )
        write = limit + ("" if synchronous_commit else "SET LOCAL synchronous_commit = off; ")
        self._limit = limit
        self.regclass = "SELECT to_regclass(%(table)s) IS NOT NULL"
        # One query string is one implicit transaction: the advisory lock
        # serializes processes creating the table at once, and a failure
        # leaves no transaction open on the connection.
        self.create = (
            "SELECT pg_advisory_xact_lock(hashtext(%(table)s));"
            f" CREATE TABLE IF NOT EXISTS {t} ("
            " key text PRIMARY KEY,"
            " data text NOT NULL,"
            " created_on timestamptz NOT NULL,"
            " modified_on timestamptz NOT NULL,"
            " expires_on timestamptz NOT NULL);"
            f" CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_on)"
        )
        # Also returns an expired row, not yet cleaned up: PGStore.load drops it.
        load = f"SELECT data, created_on, modified_on, expires_on, {now} FROM {t} WHERE key = %(key)s"
        self.load = self._statement("load", limit, load)
        # Writes with a lifetime (%(ttl)s, interval text), and without one.
        self.save, self.replace, self.touch = self._writes(t, write, now, f"{now} + %(ttl)s::interval", "")
        self.save_forever, self.replace_forever, self.touch_forever = self._writes(
            t, write, now, "'infinity'::timestamptz", "_forever"
        )
        self.delete = self._statement("delete", write, f"DELETE FROM {t} WHERE key = %(key)s")
        self.count_expired = f"SELECT count(*) FROM {t} WHERE expires_on <= {now}"
        self.table_stats = (
            f"SELECT count(*) FILTER (WHERE expires_on > {now}), count(*) FILTER (WHERE expires_on <= {now}),"
            " pg_table_size(%(table)s::regclass), pg_indexes_size(%(table)s::regclass)"
            f" FROM {t}"
        )
        self.try_cleanup_lock = (
            "SELECT pg_try_advisory_xact_lock(hashtext('pyramid_pgstore cleanup ' || %(table)s))"
        )
        # Bounded batches: each is its own short transaction, and SKIP LOCKED
        # never waits for a row a live request is writing. Rows are found by
        # ctid, locked by this same statement so they cannot move under it:
        # five times faster than joining on key (bench/cleanup.py).
        self.delete_expired_batch = (
            f"{limit}DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t}"
            f" WHERE expires_on <= {now} LIMIT %(limit)s FOR UPDATE SKIP LOCKED))"
        )

    def _statement(self, kind: str, prefix: str, body: str) -> Statement:
        """A per-request statement: text, or prepared (see _prepared)."""
        return Prepared(kind, prefix, body, self._limit) if self._prepare else prefix + body

    def _writes(
        self, t: str, write: str, now: str, expires: str, suffix: str
    ) -> tuple[Statement, Statement, Statement]:
        """The save, replace and touch statements, for one expiry expression."""
        live = f"expires_on + interval '0 s' > {now}"
        # One statement whether the row exists or not. A row that had expired
        # (not yet cleaned up) starts over with a new created_on.
        save = (
            f"INSERT INTO {t} AS s (key, data, created_on, modified_on, expires_on)"
            f" VALUES (%(key)s, %(data)s, {now}, {now}, {expires})"
            " ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data,"
            " modified_on = EXCLUDED.modified_on, expires_on = EXCLUDED.expires_on,"
            " created_on = CASE WHEN s.expires_on > EXCLUDED.modified_on"
            " THEN s.created_on ELSE EXCLUDED.created_on END"
        )
        replace = (
            f"UPDATE {t} SET data = %(data)s, modified_on = {now}, expires_on = {expires}"
            f" WHERE key = %(key)s AND {live}"
        )
        touch = f"UPDATE {t} SET expires_on = {expires} WHERE key = %(key)s AND {live}"
        return (
            self._statement("save" + suffix, write, save),
            self._statement("replace" + suffix, write, replace),
            self._statement("touch" + suffix, write, touch),
        )


class PGStore:
    """Sessions in a PostgreSQL table, reached through a psycopg2 pool.

    ``PGStore(dsn, ...)`` owns a ``ThreadedConnectionPool`` (built lazily in
    each process); :meth:`from_pool` borrows the caller's pool instead.
    Thread-safe: one store serves every thread of an app.

    :param dsn: libpq connection string or URL.
    :param table: ``name`` or ``schema.name``; the schema must exist.
    :param pool_min: connections opened when a process first uses the pool.
    :param pool_max: most connections open at once; idle ones are kept.
    :param pool_timeout: seconds a checkout waits for a free connection
        before :class:`~pyramid_pgstore.PoolTimeout`; also the default
        libpq ``connect_timeout``.
    :param statement_timeout: seconds after which PostgreSQL cancels a
        statement (a lock held on the table, an overloaded server), so a
        request fails with :class:`~pyramid_pgstore.StoreUnavailable` instead
        of hanging. Set per statement (``SET LOCAL``), so it works behind
        PgBouncer; None leaves the server's setting.
    :param synchronous_commit: False commits session writes without waiting
        for the WAL flush (``synchronous_commit = off`` for those transactions
        only): faster writes; a database crash may lose the last fraction of a
        second of session writes, never corrupts. Reads are unaffected.
    :param prepare_statements: prepare the per-request statements on each
        connection (one extra round trip per statement the first time), so
        PostgreSQL plans them once instead of on every execution: faster
        loads and writes. Not behind PgBouncer in transaction mode.
    :param create_table: create the table and its index if missing.
    :param max_length: largest serialized session in bytes; 0 = unlimited.
    :param serializer: ``dumps``/``loads`` object; JSON by default.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = DEFAULT_TABLE,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 30.0,
        statement_timeout: float | None = None,
        synchronous_commit: bool = True,
        prepare_statements: bool = False,
        create_table: bool = True,
        max_length: int = 4096,
        serializer: Serializer | None = None,
    ) -> None:
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError(f"need 0 <= pool_min <= pool_max and pool_max >= 1, got {pool_min}, {pool_max}")
        checkout = OwnedPool(pool_min, pool_max, pool_timeout, _connect_kwargs(dsn, pool_timeout))
        self.dsn: str | None = dsn
        self._setup(
            checkout,
            table,
            pool_timeout,
            statement_timeout,
            synchronous_commit,
            prepare_statements,
            create_table,
            max_length,
            serializer,
        )
        # Nothing stays open from construction: a server that forks workers
        # now gives them no shared socket. Each process connects on first use.
        checkout.release()

    @classmethod
    def from_pool(
        cls,
        pool: AbstractConnectionPool,
        *,
        table: str = DEFAULT_TABLE,
        pool_timeout: float = 30.0,
        statement_timeout: float | None = None,
        synchronous_commit: bool = True,
        prepare_statements: bool = False,
        create_table: bool = True,
        max_length: int = 4096,
        serializer: Serializer | None = None,
    ) -> PGStore:
        """A store on the caller's psycopg2 pool (Go's NewPGStoreFromPool).

        :meth:`close` leaves that pool open. Connections are borrowed in
        autocommit mode and given back with their own setting restored.
        """
        store = cls.__new__(cls)
        store.dsn = None
        checkout = BorrowedPool(pool, pool_timeout)
        store._setup(
            checkout,
            table,
            pool_timeout,
            statement_timeout,
            synchronous_commit,
            prepare_statements,
            create_table,
            max_length,
            serializer,
        )
        return store

    def _setup(
        self,
        checkout: Checkout,
        table: str,
        pool_timeout: float,
        statement_timeout: float | None,
        synchronous_commit: bool,
        prepare_statements: bool,
        create_table: bool,
        max_length: int,
        serializer: Serializer | None,
    ) -> None:
        if max_length < 0:
            raise ValueError(f"max_length must be 0 (unlimited) or more, got {max_length}")
        if pool_timeout <= 0:
            raise ValueError(f"pool_timeout must be positive, got {pool_timeout}")
        self.table = table
        self.max_length = max_length
        self.serializer: Serializer = serializer or JSONSerializer()
        self._plain_sql = _Statements(
            table, synchronous_commit, statement_timeout, prepare=prepare_statements
        )
        # While a test moves the clock: text statements, whatever the setting.
        self._shifted_sql = _Statements(table, synchronous_commit, statement_timeout, _Statements.SHIFTED_NOW)
        self._prepared = PreparedStatements()
        self._checkout = checkout
        self._queries = 0
        self._cleanups: list[CleanupHandle] = []
        _LIVE_STORES.add(self)
        if create_table:
            self._create_table()

    # -- statements ---------------------------------------------------------

    @property
    def _sql(self) -> _Statements:
        return self._shifted_sql if _clock.clock.offset else self._plain_sql

    def _run(self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T]) -> T:
        """Run one statement and return ``result(cursor)``.

        A connection that breaks under it (server restart, network cut,
        ``pg_terminate_backend``) is discarded and the statement retried once
        on a new connection: every statement here is idempotent.
        """
        params["offset"] = _clock.clock.offset
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

    def serialize(self, data: Mapping[str, Any]) -> str:
        """Serialize session data, enforcing ``max_length``; no database work.

        :raises SessionTooLarge: the result is over ``max_length`` bytes.
        :raises TypeError: a value cannot be serialized; the message names its key.
        """
        try:
            payload = self.serializer.dumps(data if isinstance(data, dict) else dict(data))
        except TypeError as exc:
            raise TypeError(_unserializable(self.serializer, data, exc)) from exc
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8")
        if self.max_length:
            size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
            if size > self.max_length:
                raise SessionTooLarge(size, self.max_length)
        return payload

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
            data = self.serializer.loads(payload)
            if not isinstance(data, dict):
                raise ValueError(f"expected an object, got {type(data).__name__}")
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
        params = {"key": storage_key(session_id), "data": payload, "ttl": _interval(ttl)}
        self._run(sql.save if ttl is not None else sql.save_forever, params, _nothing)

    def replace_serialized(self, session_id: str, payload: str, ttl: float | None) -> bool:
        """Replace the data of a live session; returns False, writing nothing,
        when it is gone (deleted by another request, or expired).

        What the session factory uses for a session it loaded, so that a
        request that started before a logout cannot bring the session back.
        """
        sql = self._sql
        params = {"key": storage_key(session_id), "data": payload, "ttl": _interval(ttl)}
        return self._run(sql.replace if ttl is not None else sql.replace_forever, params, _rowcount) > 0

    def touch(self, session_id: str, ttl: float | None) -> bool:
        """Move the expiry to ``ttl`` seconds from now; data is untouched.

        Returns False when there is no live session to refresh.
        """
        sql = self._sql
        params = {"key": storage_key(session_id), "ttl": _interval(ttl)}
        return self._run(sql.touch if ttl is not None else sql.touch_forever, params, _rowcount) > 0

    def delete(self, session_id: str) -> bool:
        """Delete the session; returns whether a row was there."""
        return self._run(self._sql.delete, {"key": storage_key(session_id)}, _rowcount) > 0

    def delete_expired(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Delete expired sessions and return how many went (Go's DeleteExpired).

        Works in batches of ``batch_size`` rows, one statement (and one short
        transaction) each, until a batch comes back short.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total = 0
        while True:
            deleted = self._delete_expired_batch(batch_size)
            total += deleted
            if deleted < batch_size:
                return total

    def _delete_expired_batch(self, limit: int) -> int:
        return self._run(self._sql.delete_expired_batch, {"limit": limit}, _rowcount)

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


# Every store not yet garbage collected: pytest_pgstore closes, after each
# test, those an app built on the test's database and never closed.
_LIVE_STORES: weakref.WeakSet[PGStore] = weakref.WeakSet()


def _connect_kwargs(dsn: str, pool_timeout: float) -> dict[str, Any]:
    """libpq parameters: the DSN, plus defaults it does not set itself."""
    try:
        given = parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise ValueError(f"invalid dsn: {exc}".strip()) from None
    kwargs: dict[str, Any] = {"dsn": dsn}
    if "connect_timeout" not in given:
        # libpq waits forever by default; 2 s is its smallest effective value.
        kwargs["connect_timeout"] = max(2, int(pool_timeout + 0.999))
    if "application_name" not in given:
        kwargs["application_name"] = "pyramid_pgstore"
    # A network cut or a frozen host would otherwise block a statement until
    # the kernel gives up (about 15 minutes): unacknowledged data fails after
    # tcp_user_timeout, and keepalives find a dead idle connection.
    defaults = {
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": max(2, int(pool_timeout + 0.999)) * 1000,
    }
    kwargs.update((name, value) for name, value in defaults.items() if name not in given)
    return kwargs


def _interval(ttl: float | None) -> str | None:
    """A lifetime in seconds as PostgreSQL interval text (see _Statements)."""
    if ttl is None:
        return None
    try:
        finite = math.isfinite(ttl)
    except (TypeError, OverflowError):
        finite = False
    if not finite:
        raise ValueError(f"ttl must be a finite number of seconds or None, got {ttl!r}")
    return f"{ttl:.6f} seconds"


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _unserializable(serializer: Serializer, data: Mapping[str, Any], exc: TypeError) -> str:
    for key, value in data.items():
        try:
            serializer.dumps({key: value})
        except TypeError as inner:
            return f"session value for key {key!r} cannot be serialized: {inner}"
    return f"session data cannot be serialized: {exc}"


def _one(cur: Cursor) -> tuple[Any, ...] | None:
    return cur.fetchone()


def _scalar(cur: Cursor) -> Any:
    return cur.fetchone()[0]


def _rowcount(cur: Cursor) -> int:
    return cur.rowcount


def _nothing(cur: Cursor) -> None:
    return None
