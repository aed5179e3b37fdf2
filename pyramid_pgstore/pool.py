"""Connection checkout on top of psycopg2's pools.

psycopg2's pools leave three things to their user, and this module does them:

* waiting: ``getconn()`` raises ``PoolError`` at once when every connection is
  out; :meth:`Checkout.getconn` waits up to ``timeout`` seconds instead;
* reuse: psycopg2 closes every returned connection beyond ``minconn``;
  :class:`_KeepIdlePool` keeps up to ``maxconn`` of them for the next request;
* processes: a pool built before a server forks its workers would share its
  sockets with them; an owned pool is built lazily, once in each process.

The store above decides what a broken connection means for its statement; this
module only discards broken connections (:meth:`Checkout.putconn`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg2
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from psycopg2.extensions import connection as Connection
from psycopg2.pool import AbstractConnectionPool, PoolError, ThreadedConnectionPool

from .dsn import redact
from .errors import PGStoreError, PoolTimeout, StoreUnavailable

log = logging.getLogger("pyramid_pgstore")

# A waiting checkout looks again this often (seconds), even if not woken.
_WAIT_POLL = 0.05


class _KeepIdlePool(ThreadedConnectionPool):
    """psycopg2's threaded pool, kept lean for one statement per checkout.

    * psycopg2 keeps only ``minconn`` of the connections handed back and
      closes the others, so under concurrency most checkouts opened a new
      connection: this pool keeps every healthy one, up to ``maxconn``;
    * a new connection is opened outside the pool's lock, so other threads
      keep taking and returning idle ones meanwhile;
    * connections are opened in autocommit mode, once;
    * taking and returning an idle connection is a list operation and two
      dict updates under the lock, no more (psycopg2's layered calls cost
      about 5 us a checkout on the request path, bench/README.rst).

    The bookkeeping is psycopg2's own (``_pool``, ``_used``, ``_rused``), so
    ``closeall()`` still closes every connection, lent or idle.
    """

    def __init__(self, maxconn: int, *args: Any, **kwargs: Any) -> None:
        self.opened = 0
        self._connecting = 0
        # minconn 0: nothing is opened here, under whatever lock the caller holds.
        super().__init__(0, maxconn, *args, **kwargs)

    def getconn(self, key: Any = None) -> Connection:
        """An idle connection, else a new one; ``PoolError`` when ``maxconn``
        are out or the pool is closed. (psycopg2's keyed connections are not
        supported: nothing here uses them.)"""
        if key is not None:
            raise PoolError("keyed connections are not supported")
        with self._lock:
            if self.closed:
                raise PoolError("connection pool is closed")
            if self._pool:
                conn = self._pool.pop()
                self._keys += 1
                self._used[self._keys] = conn
                self._rused[id(conn)] = self._keys
                return conn
            if len(self._used) + self._connecting >= self.maxconn:
                raise PoolError("connection pool exhausted")
            self._connecting += 1
        try:
            conn = psycopg2.connect(*self._args, **self._kwargs)
            conn.autocommit = True
        finally:
            with self._lock:
                self._connecting -= 1
        with self._lock:
            if self.closed:
                conn.close()
                raise PoolError("connection pool is closed")
            self._keys += 1
            self._used[self._keys] = conn
            self._rused[id(conn)] = self._keys
            self.opened += 1
        return conn

    def putconn(self, conn: Connection, key: Any = None, close: bool = False) -> None:
        """Keep the connection if it is open, idle and in autocommit mode, else
        close it (psycopg2 would roll back one left in a transaction, and keep it)."""
        keep = (
            not close
            and not conn.closed
            and conn.autocommit
            and conn.get_transaction_status() == TRANSACTION_STATUS_IDLE  # conn.info: an object per call
        )
        with self._lock:
            if self.closed:
                raise PoolError("connection pool is closed")
            key = self._rused.pop(id(conn), None)
            if key is None:
                raise PoolError("trying to put unkeyed connection")
            del self._used[key]
            if keep:
                self._pool.append(conn)
                return
        conn.close()


def _discard_idle(pool: AbstractConnectionPool) -> int:
    """Close the pool's idle connections and return how many there were.

    Called after one connection turned out broken: the others idle beside it
    went through the same restart or network cut, and handing them out would
    fail the next requests one by one. (``_pool`` is the idle list in every
    psycopg2 pool, unchanged since 2.0.)
    """
    with getattr(pool, "_lock", None) or nullcontext():
        idle = list(pool._pool)
        pool._pool[:] = []
    for conn in idle:
        conn.close()
    return len(idle)


class Checkout:
    """Lends connections from a psycopg2 pool: waits, discards broken ones.

    Connections are lent in autocommit mode, so one statement is one round
    trip. Use :meth:`getconn` and give every connection back to
    :meth:`putconn` in a ``finally`` block.
    """

    _dsn = ""  # for keeping its password out of error messages

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.waits = 0
        self.timeouts = 0
        self.discarded = 0
        self._closed = False
        self._reset_after_fork()
        _CHECKOUTS.add(self)

    def _reset_after_fork(self) -> None:
        # A lock held by another thread at fork time stays locked forever in
        # the child: each process gets its own.
        self._cond = threading.Condition()
        self._waiting = 0  # threads waiting in getconn for a connection

    def _pool(self) -> AbstractConnectionPool:
        raise NotImplementedError

    def getconn(self) -> Connection:
        """Return a connection, waiting up to ``timeout`` for a free one.

        No lock of ours is held while a connection is opened, so a slow or
        unreachable server delays only the threads that need a new one.

        :raises PoolTimeout: none became free in time.
        :raises StoreUnavailable: a new connection could not be opened.
        """
        deadline = None  # set on the first wait: most checkouts never wait
        while True:
            if self._closed:
                raise PGStoreError("the store is closed")
            try:
                pool = self._pool()
                conn = pool.getconn()
            except PoolError:
                if pool.closed:
                    raise PGStoreError("the connection pool is closed") from None
            except psycopg2.OperationalError as exc:
                raise self._cannot_connect(exc) from exc
            else:
                self._lend(conn)
                return conn
            if deadline is None:
                deadline = time.monotonic() + self.timeout
                self.waits += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.timeouts += 1
                raise PoolTimeout(
                    f"no free database connection after {self.timeout:.2f} s "
                    f"(all {pool.maxconn} in use; raise pool_max or pool_timeout)"
                )
            with self._cond:
                # Woken by putconn; the poll also catches returns we are not
                # told of (a borrowed pool's other users, a wake-up sent
                # between our failed try and this wait).
                self._waiting += 1
                try:
                    self._cond.wait(min(remaining, _WAIT_POLL))
                finally:
                    self._waiting -= 1

    def _cannot_connect(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(redact(f"cannot connect to PostgreSQL: {str(exc).strip()}", self._dsn))

    def putconn(self, conn: Connection, broken: bool = False) -> None:
        """Give a connection back; a broken one is closed, with its idle peers."""
        broken = broken or bool(conn.closed)
        pool = self._lent_from()
        try:
            if pool is None:
                raise PoolError("the pool was closed during the checkout")
            if broken:
                self._forget(conn)
            else:
                self._unlend(conn)
            pool.putconn(conn, close=broken)
        except PoolError:
            conn.close()
        else:
            if broken:
                self.discarded += 1 + _discard_idle(pool)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def _lent_from(self) -> AbstractConnectionPool | None:
        """The pool that lent the connections now out, if it still exists."""
        return self._pool()

    def _lend(self, conn: Connection) -> None:
        """Make a connection ready to lend (a pool of ours opens them ready)."""

    def _unlend(self, conn: Connection) -> None:
        pass

    def _forget(self, conn: Connection) -> None:
        pass

    @property
    def opened(self) -> int | None:
        """Connections opened so far, where the pool is ours to count."""
        return None

    @contextmanager
    def dedicated(self) -> Iterator[Connection]:
        """A connection held for a long task (the cleanup lock), in autocommit
        mode. From a borrowed pool it is one of the pool's connections, held
        for the task; an owned pool opens one outside the pool instead."""
        conn = self.getconn()
        try:
            yield conn
        finally:
            self.putconn(conn)

    def close(self) -> None:
        """Stop lending; closes the pool only if this checkout created it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def release(self) -> None:
        """Called once the store is built (its table checked or created): leave
        no connection open that a process forked afterwards would inherit.
        Nothing to do for a pool of the caller's."""

    def after_fork(self) -> None:
        """Called in a child process just after a fork: the parent's locks
        and connections are not the child's."""
        self._reset_after_fork()


class OwnedPool(Checkout):
    """A checkout over its own :class:`_KeepIdlePool`, built on first use."""

    def __init__(
        self,
        minconn: int,
        maxconn: int,
        timeout: float,
        connect_kwargs: dict[str, Any],
    ) -> None:
        self._minconn = minconn
        self._maxconn = maxconn
        self._connect_kwargs = connect_kwargs
        self._dsn = str(connect_kwargs.get("dsn", ""))
        self._opened_before = 0
        super().__init__(timeout)

    def _reset_after_fork(self) -> None:
        super()._reset_after_fork()
        # The parent's connections are not ours: closing them would send a
        # Terminate message on the parent's sockets. Forget them unclosed
        # (psycopg2 does not close, when collected, a connection that
        # another process opened).
        self._current: _KeepIdlePool | None = None

    def _pool(self) -> _KeepIdlePool:
        pool = self._current
        if pool is None:
            with self._cond:
                pool = self._current
                if pool is None:
                    pool = self._current = _KeepIdlePool(self._maxconn, **self._connect_kwargs)
                    log.info("opened a pool of up to %d connections (process %d)", self._maxconn, os.getpid())
                    fresh = True
                else:
                    fresh = False
            if fresh and self._minconn:
                # pool_min: connections opened ahead, by the first thread to
                # use the pool in this process, outside any lock.
                warm: list[Connection] = []
                try:
                    for _ in range(self._minconn):
                        warm.append(pool.getconn())
                finally:
                    for conn in warm:
                        pool.putconn(conn)
        return pool

    def _lent_from(self) -> _KeepIdlePool | None:
        return self._current

    @contextmanager
    def dedicated(self) -> Iterator[Connection]:
        # A connection of its own, outside the pool: with pool_max = 1 the
        # cleanup's batches would otherwise wait forever for the one slot.
        try:
            conn = psycopg2.connect(**self._connect_kwargs)
        except psycopg2.OperationalError as exc:
            raise self._cannot_connect(exc) from exc
        try:
            conn.autocommit = True
            yield conn
        finally:
            conn.close()

    @property
    def opened(self) -> int:
        current = self._current.opened if self._current is not None else 0
        return self._opened_before + current

    def release(self) -> None:
        """Close every pooled connection; the next checkout builds a new pool.

        The store calls this after creating its table at construction, so a
        server that forks workers afterwards hands them no open socket.
        """
        with self._cond:
            if self._current is not None:
                self._opened_before += self._current.opened
                self._current.closeall()
                self._current = None
                if not self._closed:
                    log.info("closed the pool's connections; each process opens its own on first use")

    def close(self) -> None:
        super().close()
        self.release()


class BorrowedPool(Checkout):
    """A checkout over the caller's psycopg2 pool, which it never closes."""

    def __init__(self, pool: AbstractConnectionPool, timeout: float) -> None:
        self._borrowed = pool
        self._autocommit: dict[int, bool] = {}
        super().__init__(timeout)

    def _pool(self) -> AbstractConnectionPool:
        return self._borrowed

    def _lend(self, conn: Connection) -> None:
        # The pool's owner may use its connections in transactions: restore
        # their setting when the connection comes back.
        self._autocommit[id(conn)] = conn.autocommit
        conn.autocommit = True

    def _unlend(self, conn: Connection) -> None:
        conn.autocommit = self._autocommit.pop(id(conn), False)

    def _forget(self, conn: Connection) -> None:
        self._autocommit.pop(id(conn), None)


_CHECKOUTS: weakref.WeakSet[Checkout] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for checkout in list(_CHECKOUTS):
        checkout.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
