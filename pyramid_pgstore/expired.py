"""The store's expired rows: counting them, deleting them in batches, and the
cleanup thread (Go's DeleteExpired, Cleanup and RunCleanup).

:class:`ExpiredRows` is a base class of :class:`~pyramid_pgstore.PGStore`,
kept apart so each can be read in one sitting; it uses the store's
``_run``, ``_sql``, ``_executor`` and ``_cleanups``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .cleanup import DEFAULT_BATCH_SIZE, Cleaner, CleanupHandle, run_cleanup
from .executor import one, rowcount, scalar


class ExpiredRows:
    """Expired sessions and their cleanup."""

    table: str
    _run: Any
    _sql: Any
    _executor: Any
    _cleanups: list[CleanupHandle]

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
        return self._run(self._sql.delete_expired_batch, {"limit": limit}, rowcount)

    def cleanup_lock(self, wait: bool = False, stop: threading.Event | None = None) -> Any:
        """Hold the table's cleanup lock for a ``with`` block, which gets
        whether it was taken.

        One cleaner per table at a time, across processes: a transaction-level
        advisory lock in a transaction held open on a connection of its own
        (so it works through PgBouncer in transaction mode too).

        :param wait: poll until the lock is free (or ``stop`` is set) instead
            of yielding False at once.
        """
        sql = self._sql
        lock = (sql.cleanup_lock_setup, sql.try_cleanup_lock, {"table": sql.quoted_table})
        return self._executor.hold_lock(*lock, wait=wait, stop=stop)

    def count_expired(self) -> int:
        """How many rows a cleanup pass would delete now (a full count):
        expired sessions, less those ended within the last
        :data:`~pyramid_pgstore.sql.ENDED_GRACE`, which cleanup keeps."""
        return self._run(self._sql.count_expired, {}, scalar, watched=False)  # a scan: no commit_timeout

    def table_stats(self) -> dict[str, int]:
        """Live and expired row counts, table and index sizes in bytes."""
        live, expired, table_bytes, index_bytes = self._run(
            self._sql.table_stats, {"table": self._sql.quoted_table}, one, watched=False
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
