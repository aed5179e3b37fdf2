"""Running one statement on a pooled connection, and what its failures mean.

Every statement the store sends is idempotent and runs in autocommit mode,
so each is one round trip, and one that meets a broken connection (a server
restart, a network cut, ``pg_terminate_backend``) can simply be sent again
on a new connection. Whatever else goes wrong with the database becomes a
:class:`~pyramid_pgstore.StoreUnavailable`, never a raw driver error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
from psycopg2.extensions import cursor as Cursor

from . import testing
from ._prepared import PreparedStatements
from .dsn import redact
from .errors import SchemaOutdated, StoreUnavailable
from .pool import Checkout
from .sql import Statement

log = logging.getLogger("pyramid_pgstore")

T = TypeVar("T")

_LOCK_POLL = 0.5  # seconds between tries when waiting for a lock


class Executor:
    """Runs statements through a :class:`~pyramid_pgstore.pool.Checkout`.

    :param checkout: where connections come from (and go back, in ``finally``).
    :param table: the table's name, for error messages.
    """

    def __init__(self, checkout: Checkout, table: str) -> None:
        self.checkout = checkout
        self.table = table
        self.queries = 0  # round trips; approximate under threads (no lock on the hot path)
        self._prepared = PreparedStatements()

    def run(self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T]) -> T:
        """Run one statement and return ``result(cursor)``.

        :raises StoreUnavailable: the database canceled or refused it, or the
            connection broke twice.
        :raises SchemaOutdated: the table lacks a column this release writes.
        """
        params["offset"] = testing.clock.offset
        for attempt in (1, 2):
            conn = self.checkout.getconn()
            broken = False
            try:
                with conn.cursor() as cur:
                    if isinstance(sql, str):
                        self.queries += 1
                        cur.execute(sql, params)
                    else:
                        self.queries += self._prepared.execute(cur, sql, params)
                    return result(cur)
            except psycopg2.errors.QueryCanceled as exc:
                raise _unavailable("the database canceled the statement", exc) from exc
            except psycopg2.errors.UndefinedColumn as exc:
                problem = f"table {self.table} lacks a column this release uses ({str(exc).strip()})"
                raise SchemaOutdated(self.table, problem) from exc
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if not conn.closed:  # the statement failed, the connection is fine
                    raise StoreUnavailable(
                        redact(f"the database refused the statement: {exc}".strip())
                    ) from exc
                broken = True
                if attempt == 2:
                    raise StoreUnavailable(
                        redact(f"lost the database connection twice: {exc}".strip())
                    ) from exc
                log.warning("database connection lost (%s); retrying", redact(str(exc).strip()))
            finally:
                self.checkout.putconn(conn, broken)
        raise AssertionError("unreachable")

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

    def run(self, sql: Statement, params: dict[str, Any], result: Callable[[Cursor], T]) -> T:
        params["offset"] = testing.clock.offset
        self.queries += 1
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                found = result(cur)
        except psycopg2.errors.UndefinedColumn as exc:
            problem = f"table {self.table} lacks a column this release uses ({str(exc).strip()})"
            raise SchemaOutdated(self.table, problem) from exc
        except psycopg2.Error as exc:
            raise _unavailable("the statement failed in the app's transaction", exc) from exc
        if self.after is not None:
            self.after()
        return found


def _unavailable(what: str, exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(redact(f"{what}: {str(exc).strip()}"))


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
