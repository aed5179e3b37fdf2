"""Deleting expired sessions without hurting live traffic.

Peers delete every expired row in one statement; on tables of millions of
rows that holds locks and bloats one transaction for seconds. Here a pass
deletes in batches, each its own short transaction that skips rows a request
is writing, and only one cleaner works on a table at a time: the others see
the lock taken and skip their pass. The lock is a transaction-level advisory
lock held on a connection of its own, so it works through PgBouncer in
transaction pooling mode too.

Used by ``PGStore.cleanup`` / ``run_cleanup`` (in the app) and by the
``pgstore-cleanup`` script.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("pyramid_pgstore")

DEFAULT_BATCH_SIZE = 1000
DEFAULT_REST = 1.0


class Cleanable(Protocol):
    """What a cleaner needs of a store (:class:`~pyramid_pgstore.PGStore` has it)."""

    table: str

    def cleanup_lock(
        self, wait: bool = False, stop: threading.Event | None = None
    ) -> AbstractContextManager[bool]: ...

    def delete_expired_batch(self, limit: int) -> int: ...


@dataclass(frozen=True)
class CleanupResult:
    """What one pass did. ``skipped``: another cleaner held the lock."""

    deleted: int
    batches: int
    seconds: float
    skipped: bool = False


class Cleaner:
    """Runs cleanup passes over one store's table.

    :param batch_size: rows deleted per statement (and per transaction).
    :param rest: after each batch, pause this many times as long as the batch
        took: at 1.0 a pass uses at most half of what the database could give
        it, leaving the rest to live requests (bench/cleanup.py).
    """

    def __init__(
        self, store: Cleanable, batch_size: int = DEFAULT_BATCH_SIZE, rest: float = DEFAULT_REST
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if rest < 0:
            raise ValueError(f"rest must be 0 or more, got {rest}")
        self.store = store
        self.batch_size = batch_size
        self.rest = rest

    def run_once(
        self,
        *,
        wait: bool = False,
        stop: threading.Event | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> CleanupResult:
        """One pass: delete expired rows in batches until none are left.

        :param wait: wait for another cleaner to finish instead of skipping.
        :param stop: when set, the pass ends after the batch in progress.
        :param on_batch: called after each batch with (deleted so far, seconds).
        """
        started = time.monotonic()
        with self.store.cleanup_lock(wait, stop) as locked:
            if not locked:
                return CleanupResult(0, 0, time.monotonic() - started, skipped=True)
            deleted = batches = 0
            stop = stop or threading.Event()
            while not stop.is_set():
                batch_started = time.monotonic()
                count = self.store.delete_expired_batch(self.batch_size)
                deleted += count
                batches += 1
                if on_batch is not None:
                    on_batch(deleted, time.monotonic() - started)
                if count < self.batch_size:
                    break
                stop.wait(self.rest * (time.monotonic() - batch_started))
        return CleanupResult(deleted, batches, time.monotonic() - started)


def run_cleanup(cleaner: Cleaner, interval: float, stop_event: threading.Event) -> Iterator[int | Exception]:
    """Every ``interval`` seconds (± 10 % so instances started together drift
    apart), run a pass; yield the number deleted or the exception it hit."""
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    while not stop_event.wait(interval * random.uniform(0.9, 1.1)):  # noqa: S311 - jitter, not secrets
        try:
            yield cleaner.run_once(stop=stop_event).deleted
        except Exception as exc:  # reported to the consumer, never raised
            yield exc


class CleanupHandle:
    """A running background cleanup (Go's Cleanup); :meth:`stop` ends it."""

    def __init__(self, cleaner: Cleaner, interval: float) -> None:
        self._stop_event = threading.Event()
        runs = run_cleanup(cleaner, interval, self._stop_event)
        self._thread = threading.Thread(
            target=self._log_runs, args=(runs,), name=f"pgstore-cleanup-{cleaner.store.table}", daemon=True
        )
        self._thread.start()

    @staticmethod
    def _log_runs(runs: Iterator[int | Exception]) -> None:
        for result in runs:
            if isinstance(result, Exception):
                log.error("cleanup failed: %s", result)
            elif result:
                log.info("cleanup deleted %d expired sessions", result)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop (after its current batch) and wait for it
        (Go's StopCleanup)."""
        self._stop_event.set()
        self._thread.join(timeout)
