"""Cleanup under live traffic: batched pgstore cleanup vs one big DELETE.

Fills a table with 1,000,000 expired sessions beside 100,000 live ones, runs
a loop of session reads and writes (the live ones) from several threads, and
measures the loop's latency:

* ``quiet``: no cleanup running (the baseline);
* ``pgstore``: during ``Cleaner.run_once()`` (batches of --batch-size);
* ``one DELETE``: during ``DELETE ... WHERE expires_on <= now()``, what
  Django's clearsessions and Go's pgstore do, on the same rows refilled.

Starts its own PostgreSQL in a temporary directory (as an unprivileged user
when root) and stops it at the end.

Usage: .venv/bin/python bench/cleanup.py [--expired 1000000] [--live 100000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

from pyramid_pgstore import Cleaner, PGStore
from pyramid_pgstore.demo.serve import local_postgres

THREADS = 4


def fill(dsn: str, expired: int, live: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO http_sessions SELECT encode(sha256(('old-' || n)::bytea), 'hex'), '{\"n\":1}',"
            " now() - interval '2 hours', now() - interval '2 hours', now() - interval '1 hour'"
            " FROM generate_series(1, %s) AS n",
            (expired,),
        )
        if live:
            cur.execute(
                "INSERT INTO http_sessions SELECT encode(sha256(('live-' || n)::bytea), 'hex'),"
                " '{\"n\":1}', now(), now(), now() + interval '1 day'"
                " FROM generate_series(1, %s) AS n ON CONFLICT DO NOTHING",
                (live,),
            )
        cur.execute("VACUUM ANALYZE http_sessions")
    conn.close()


class Traffic:
    """Threads loading and saving random live sessions, timing each call."""

    def __init__(self, store: PGStore, live: int) -> None:
        self.store = store
        self.live = live
        self.samples: list[tuple[float, float]] = []  # (start time, seconds)
        self.stop = threading.Event()
        self.errors = 0
        self.threads = [threading.Thread(target=self._loop, args=(seed,)) for seed in range(THREADS)]

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        samples = []
        while not self.stop.is_set():
            session_id = f"live-{rng.randint(1, self.live)}"
            started = time.perf_counter()
            try:
                if rng.random() < 0.5:
                    self.store.load(session_id)
                else:
                    self.store.save(session_id, {"n": rng.randint(1, 1000)}, 86400)
            except Exception:
                self.errors += 1
            samples.append((started, time.perf_counter() - started))
        self.samples.extend(samples)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def latencies(self, start: float, end: float) -> list[float]:
        return sorted(seconds for begun, seconds in self.samples if start <= begun < end)


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))] * 1000


def measure(store: PGStore, live: int, action, settle: float = 1.0) -> tuple[list[float], float]:
    """Run traffic, then ``action`` during it; latencies while it ran, its seconds."""
    with Traffic(store, live) as traffic:
        time.sleep(settle)
        start = time.perf_counter()
        action()
        end = time.perf_counter()
    return traffic.latencies(start, end), end - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--expired", type=int, default=1_000_000)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rest", type=float, default=1.0)
    parser.add_argument("--quiet-seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, local_postgres(Path(tmp) / "pg") as dsn:
        store = PGStore(dsn, pool_max=THREADS + 2)
        fill(dsn, 0, args.live)
        quiet, _ = measure(store, args.live, lambda: time.sleep(args.quiet_seconds))

        fill(dsn, args.expired, 0)
        cleaner = Cleaner(store, batch_size=args.batch_size, rest=args.rest)
        result = None

        def batched() -> None:
            nonlocal result
            result = cleaner.run_once()

        ours, ours_seconds = measure(store, args.live, batched)
        assert result is not None and result.deleted == args.expired, result

        fill(dsn, args.expired, 0)

        def one_delete() -> None:
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("DELETE FROM http_sessions WHERE expires_on <= now()")
                assert cur.rowcount == args.expired
            conn.close()

        theirs, theirs_seconds = measure(store, args.live, one_delete)
        store.close()

    base_p99 = percentile(quiet, 0.99)
    print(
        f"\n{args.expired:,} expired rows beside {args.live:,} live; "
        f"{THREADS} threads loading and saving live sessions"
    )
    print(f"{'phase':28s} {'seconds':>8s} {'ops':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99 / quiet':>12s}")
    for name, lat, seconds in [
        ("quiet (no cleanup)", quiet, args.quiet_seconds),
        (f"pgstore {args.batch_size}/batch, rest {args.rest:g}", ours, ours_seconds),
        ("one DELETE statement", theirs, theirs_seconds),
    ]:
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        print(f"{name:28s} {seconds:8.2f} {len(lat):7d} {p50:8.2f} {p99:8.2f} {p99 / base_p99:11.2f}x")
    print(
        f"pgstore cleanup: {result.deleted:,} rows in {result.batches} batches; median quiet p50 "
        f"{statistics.median(quiet) * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
