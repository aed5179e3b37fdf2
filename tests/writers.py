"""Threads writing sessions through a store during a failover, and what they saw."""

import collections
import itertools
import threading
import time

import psycopg2

from pyramid_pgstore.records import storage_key


class Writers:
    """Threads saving new sessions on ``store`` until stopped; each save
    logged with its time and outcome (the key, or the exception's class)."""

    def __init__(self, store, count=4, name="writer"):
        self.store = store
        self.name = name
        self.stop = threading.Event()
        self.log = []  # (started, seconds, key or None, error class name or None)
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(count)]

    def _run(self, n):
        i = 0
        while not self.stop.is_set():
            key = f"{self.name}{n}-{i}"
            started = time.monotonic()
            try:
                self.store.save(key, {"i": i}, 600)
                self.log.append((started, time.monotonic() - started, key, None))
            except Exception as exc:  # all kinds, to assert which ones happened
                self.log.append((started, time.monotonic() - started, None, type(exc).__name__))
            i += 1
            time.sleep(0.005)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    @property
    def acknowledged(self):
        return {key for _, _, key, _ in self.log if key is not None}

    def errors(self):
        return [(started, error) for started, _, _, error in self.log if error is not None]

    def succeeded_after(self, moment):
        return [key for started, _, key, _ in self.log if key is not None and started > moment]

    def during(self, start, end):
        """What the saves started between ``start`` and ``end`` met: a dict of
        ``requests``, ``failed`` (by error class), ``slowest`` (seconds) and
        ``outage``, the longest time no save was acknowledged that overlaps
        the window (seconds)."""
        inside = [entry for entry in self.log if start <= entry[0] <= end]
        done = sorted(started + seconds for started, seconds, key, _ in self.log if key is not None)
        gaps = [b - a for a, b in itertools.pairwise(done) if b > start and a < end]
        return {
            "requests": len(inside),
            "failed": dict(collections.Counter(error for *_, error in inside if error is not None)),
            "slowest": max((seconds for _, seconds, _, _ in inside), default=0.0),
            "outage": max(gaps, default=0.0),
        }


def stored_keys(dsn, keys):
    """Which of the session ids ``keys`` have a row on the server of ``dsn``
    (as their storage keys)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT key FROM http_sessions WHERE key = ANY(%s)", ([storage_key(k) for k in keys],)
            )
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def lost_writes(writers, dsn):
    """The acknowledged saves of ``writers`` that the server of ``dsn`` does not have."""
    acknowledged = writers.acknowledged
    found = stored_keys(dsn, acknowledged)
    return sorted(key for key in acknowledged if storage_key(key) not in found)
