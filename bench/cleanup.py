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
import time
from pathlib import Path

import psycopg2
from servers import DATABASE, LoadThreads, postgres

from pyramid_pgstore import Cleaner, CleanupResult, PGStore

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


class Traffic(LoadThreads):
    """THREADS threads loading and saving random live sessions, timing each call."""

    def __init__(self, store: PGStore, live: int) -> None:
        super().__init__(THREADS)
        self.store = store
        self.live = live
        self.samples: list[tuple[float, float]] = []  # (start time, seconds)
        self.errors = 0

    def loop(self, seed: int) -> None:
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


def one_delete(dsn: str, expected: int) -> None:
    """What Django's clearsessions and Go's pgstore do: one statement for all."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DELETE FROM http_sessions WHERE expires_on <= now()")
        assert cur.rowcount == expected
    conn.close()


def phases(dsn: str, args: argparse.Namespace) -> tuple[list[tuple[str, list[float], float]], CleanupResult]:
    """Traffic quiet, during a batched cleanup and during one DELETE (the
    expired rows refilled before each): (phase, latencies, seconds) each, and
    what the batched cleanup reported."""
    with PGStore(dsn, pool_max=THREADS + 2) as store:
        fill(dsn, 0, args.live)
        quiet, _ = measure(store, args.live, lambda: time.sleep(args.quiet_seconds))

        fill(dsn, args.expired, 0)
        cleaner = Cleaner(store, batch_size=args.batch_size, rest=args.rest)
        results: list[CleanupResult] = []
        ours, ours_seconds = measure(store, args.live, lambda: results.append(cleaner.run_once()))
        assert results[0].deleted == args.expired, results[0]

        fill(dsn, args.expired, 0)
        theirs, theirs_seconds = measure(store, args.live, lambda: one_delete(dsn, args.expired))
    return [
        ("quiet (no cleanup)", quiet, args.quiet_seconds),
        (f"pgstore {args.batch_size}/batch, rest {args.rest:g}", ours, ours_seconds),
        ("one DELETE statement", theirs, theirs_seconds),
    ], results[0]


def report(
    args: argparse.Namespace, rows: list[tuple[str, list[float], float]], result: CleanupResult
) -> None:
    """One line per phase: its length, operations, p50, p99 and p99 against quiet's."""
    quiet = rows[0][1]
    base_p99 = percentile(quiet, 0.99)
    print(
        f"\n{args.expired:,} expired rows beside {args.live:,} live; "
        f"{THREADS} threads loading and saving live sessions"
    )
    print(f"{'phase':28s} {'seconds':>8s} {'ops':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99 / quiet':>12s}")
    for name, lat, seconds in rows:
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        print(f"{name:28s} {seconds:8.2f} {len(lat):7d} {p50:8.2f} {p99:8.2f} {p99 / base_p99:11.2f}x")
    print(
        f"pgstore cleanup: {result.deleted:,} rows in {result.batches} batches; median quiet p50 "
        f"{statistics.median(quiet) * 1000:.2f} ms"
    )


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
    with tempfile.TemporaryDirectory() as tmp, postgres(Path(tmp) / "pg") as server:
        rows, result = phases(server.dsn(DATABASE), args)
    report(args, rows, result)


if __name__ == "__main__":
    main()
