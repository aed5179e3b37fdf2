"""Running one statement on a pooled connection, and what its failures mean.

Every statement the store sends is idempotent and runs in autocommit mode,
so each is one round trip, and one that meets a broken connection (a server
restart, a network cut, ``pg_terminate_backend``) can simply be sent again
on a new connection. Whatever else goes wrong with the database becomes a
:class:`~pyramid_pgstore.StoreUnavailable`, never a raw driver error.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import psycopg2
import psycopg2.errors
from psycopg2.extensions import cursor as Cursor

from ._prepared import PreparedStatements
from .dsn import redact
from .errors import PoolTimeout, SchemaOutdated, StoreUnavailable, UnsupportedStatement
from .pool import Checkout
from .sql import Statement
from .watchdog import watchdog as _watchdog

log = logging.getLogger("pyramid_pgstore")

T = TypeVar("T")

_LOCK_POLL = 0.5  # seconds between tries when waiting for a lock
_FAILOVER_POLL = 0.1  # seconds between tries when waiting for a writable server
_UNREPLICATED = "canceling wait for synchronous replication"


class Runner(Protocol):
    """What runs the store's statements: :class:`Executor` on its pool, or
    :class:`TransactionExecutor` in the app's transaction."""

    queries: int

    def run(
        self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T], *, watched: bool = True
    ) -> T: ...


class _Retry(Exception):
    """This try failed in a way another may not: say why, and whether to
    try again at once (a broken connection) or after a pause (no server)."""

    def __init__(self, reason: str, immediately: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.immediately = immediately


def _read_only(conn: Any) -> bool:
    """The server says, with every reply (PostgreSQL 14 and later report
    both settings to the client, at no round trip), that it takes no writes."""
    status = conn.get_parameter_status  # the connection's own: conn.info makes an object per call
    return status("default_transaction_read_only") == "on" or status("in_hot_standby") == "on"


def _refuse_unreplicated(conn: Any, commit_timeout: float | None) -> None:
    """A commit that the watchdog canceled while it waited for a
    synchronous standby has committed on the server, unconfirmed: it is not
    acknowledged (a failover may lose it), so the statement fails."""
    notices, conn.notices[:] = list(conn.notices), []
    if any(_UNREPLICATED in notice for notice in notices):
        raise StoreUnavailable(
            f"the write was not confirmed by a synchronous standby within {commit_timeout:g} s "
            "(it is committed on the primary; see the docs, High availability)"
        )


class _ReadOnly(Exception):
    """The connection's server turned out read-only (fenced, or a standby)."""


class Executor:
    """Runs statements through a :class:`~pyramid_pgstore.pool.Checkout`.

    :param checkout: where connections come from (and go back, in ``finally``).
    :param table: the table's name, for error messages.
    :param failover_timeout: how long a statement waits for a writable
        server (during a failover, a restart) before it fails; 0: not at all.
    :param commit_timeout: how long a statement may run before it is
        canceled from here (a commit waiting for a synchronous standby that
        is gone, which no server-side timeout ends); None: no limit.
    """

    def __init__(
        self,
        checkout: Checkout,
        table: str,
        failover_timeout: float = 0.0,
        commit_timeout: float | None = None,
    ) -> None:
        self.checkout = checkout
        self.table = table
        self.failover_timeout = failover_timeout
        self.commit_timeout = commit_timeout
        self.queries = 0  # round trips; approximate under threads (no lock on the hot path)
        self._prepared = PreparedStatements()

    def run(
        self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T], *, watched: bool = True
    ) -> T:
        """Run one statement and return ``result(cursor)``; ``watched``: cancel
        it past ``commit_timeout`` (False for schema changes and table scans,
        which may rightly take longer than any request).

        A connection that breaks under it (a restart, a network cut,
        ``pg_terminate_backend``), or whose server turns out read-only (a
        fenced old primary, a standby), is discarded with its idle peers and
        the statement sent again on a new connection, which a multi-host DSN
        with ``target_session_attrs=read-write`` takes to the primary. While
        no server can be reached, it tries again every 0.1 s for up to
        ``failover_timeout`` seconds.

        :raises StoreUnavailable: the database canceled or refused it, or no
            writable server answered in time.
        :raises UnsupportedStatement: (a StoreUnavailable) the database does
            not support the statement: Citus, on a table distributed after
            the store started.
        :raises SchemaOutdated: the table lacks a column this release writes.
        """
        deadline = time.monotonic() + self.failover_timeout
        tried_again = False
        while True:
            try:
                return self._once(sql, params, result, self.commit_timeout if watched else None)
            except _Retry as retry:
                if retry.immediately and not tried_again:
                    log.warning("%s; trying again", redact(retry.reason))
                elif time.monotonic() + _FAILOVER_POLL > deadline:
                    raise StoreUnavailable(redact(retry.reason)) from retry.__cause__
                else:
                    time.sleep(_FAILOVER_POLL)
                tried_again = True

    def _once(
        self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T], timeout: float | None
    ) -> T:
        try:
            conn = self.checkout.getconn()
        except PoolTimeout:
            raise
        except StoreUnavailable as exc:  # no server to connect to (down, being promoted)
            raise _Retry(str(exc), immediately=False) from exc
        broken = canceled = False
        try:
            with conn.cursor() as cur:
                watch = _watchdog.start(conn, timeout)
                try:
                    if isinstance(sql, str):
                        self.queries += 1
                        cur.execute(sql, params)
                    else:
                        self.queries += self._prepared.execute(cur, sql, params)
                finally:
                    canceled = _watchdog.stop(watch)
                if _read_only(conn):
                    raise _ReadOnly
                found = result(cur)
            if conn.notices:
                _refuse_unreplicated(conn, self.commit_timeout)
            return found
        except (_ReadOnly, psycopg2.errors.ReadOnlySqlTransaction) as exc:
            broken = True  # a read-only server is useless to a session store
            raise _Retry("the database server is read-only (a failover?)", immediately=True) from exc
        except psycopg2.errors.QueryCanceled as exc:
            raise _unavailable("the database canceled the statement", exc) from exc
        except psycopg2.errors.UndefinedColumn as exc:
            raise _schema_outdated(self.table, exc) from exc
        except psycopg2.errors.FeatureNotSupported as exc:
            raise _unsupported(exc) from exc
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if not conn.closed:  # the statement failed, the connection is fine
                raise _unavailable("the database refused the statement", exc) from exc
            broken = True
            raise _Retry(f"lost the database connection ({str(exc).strip()})", immediately=True) from exc
        finally:
            # A canceled connection is not reused: the cancel might still reach its next statement.
            self.checkout.putconn(conn, broken or canceled)

    @contextmanager
    def hold_lock(
        self, setup: str, try_lock: str, params: dict[str, Any], *, wait: bool, stop: threading.Event | None
    ) -> Iterator[bool]:
        """Hold a transaction-level advisory lock (``try_lock`` answers
        whether it was taken) for the block, in a transaction kept open on a
        dedicated connection; yield whether it was taken.

        :param wait: poll until it is free (or ``stop`` is set) instead of
            yielding False at once.
        """
        with self.checkout.dedicated() as conn:
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    cur.execute(setup)
                    while True:
                        cur.execute(try_lock, params)
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


class TransactionExecutor:
    """Runs statements on one connection, inside its owner's transaction
    (``pgstore.transaction = shared``: the app's SQLAlchemy session's).

    No autocommit and no retry: a broken connection fails the whole
    transaction, which the app's transaction manager then aborts. Failures
    are still :class:`~pyramid_pgstore.StoreUnavailable`. ``after`` is
    called after each statement (to tell zope.sqlalchemy the session wrote).
    """

    def __init__(self, conn: Any, table: str, after: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.table = table
        self.after = after
        self.queries = 0

    def run(
        self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T], *, watched: bool = True
    ) -> T:
        self.queries += 1
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                found = result(cur)
        except driver_errors() as exc:  # psycopg2's, or psycopg 3's on a postgresql+psycopg session
            if sqlstate(exc) == UNDEFINED_COLUMN:
                raise _schema_outdated(self.table, exc) from exc
            if sqlstate(exc) == FEATURE_NOT_SUPPORTED:
                raise _unsupported(exc) from exc
            raise _unavailable("the statement failed in the app's transaction", exc) from exc
        if self.after is not None:
            self.after()
        return found


UNDEFINED_COLUMN = "42703"
FEATURE_NOT_SUPPORTED = "0A000"  # what Citus says of a statement it cannot run


def driver_errors() -> tuple[type[Exception], ...]:
    """The errors a database driver in use here raises: psycopg2's, and
    psycopg 3's once it is imported (an app's SQLAlchemy session on
    ``postgresql+psycopg``, where ``shared`` mode runs its statements)."""
    psycopg = sys.modules.get("psycopg")
    return (psycopg2.Error,) if psycopg is None else (psycopg2.Error, psycopg.Error)


def sqlstate(exc: Exception) -> str | None:
    """The SQLSTATE PostgreSQL gave for a driver's error (psycopg2: ``pgcode``;
    psycopg 3: ``sqlstate``); None for an error of the client's own."""
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)


def _unavailable(what: str, exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(redact(f"{what}: {str(exc).strip()}"))


def _unsupported(exc: Exception) -> UnsupportedStatement:
    return UnsupportedStatement(
        redact(
            f"the database does not support this statement ({str(exc).strip()}); on Citus: a table "
            "distributed after this process started needs a restart, or pgstore.distributed = true"
        )
    )


def _schema_outdated(table: str, exc: Exception) -> SchemaOutdated:
    return SchemaOutdated(table, f"table {table} lacks a column this release uses ({str(exc).strip()})")


def one(cur: Cursor) -> tuple[Any, ...] | None:
    return cur.fetchone()


def scalar(cur: Cursor) -> Any:
    return cur.fetchone()[0]


def rowcount(cur: Cursor) -> int:
    return cur.rowcount


def rows(cur: Cursor) -> list[tuple[Any, ...]]:
    return cur.fetchall()


def nothing(cur: Cursor) -> None:
    return None
