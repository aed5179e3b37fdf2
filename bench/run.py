"""Session backends side by side: cookie, redis, redis-lru, floor and pgstore (issue 5).

Starts on 127.0.0.1 a throwaway PostgreSQL (pytest_pgstore.localdb's
LocalPostgres: as an unprivileged user when run as root, data in a temp
dir), a throwaway redis-server, and one gunicorn server per backend; creates
the sessions through each backend's own /write; drives /untouched, /read and
/write with wrk, rotating over the sessions, backends interleaved within each
repetition; then times PGStore against raw psycopg2 in-process (micro) and
reads at 1,000 vs 1,000,000 rows (scale); then counts the instructions of a
request in the app process and in its PostgreSQL backend under callgrind
(counts, bench/counts.py). Everything it started is stopped on exit, Ctrl-C
included.

Usage: .venv/bin/python bench/run.py [--quick] [--reps N] [--duration S] ...
(``make bench`` runs the full version; ``bench/setup.sh`` installs wrk,
redis-server and the Python packages.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import counts
import floor
import lean
import report
from matrix import TIMEOUT, pg_facts, run_matrix, start_backends
from micro import run_micro
from scale import run_scale
from servers import DATABASE, WAITED, log, postgres, redis_server


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the defaults of a full run or of ``--quick`` filled in."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, about 2 minutes")
    parser.add_argument("--reps", type=int, help="repetitions (full 5, quick 2)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (full 5, quick 1)")
    parser.add_argument(
        "--warmup", type=int, help="seconds of unrecorded load per backend and endpoint (full 2, quick 1)"
    )
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per backend (default 1000)")
    parser.add_argument("--server", choices=("gunicorn", "waitress"), default="gunicorn")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="waitress threads (default 4)")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (default 4)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--micro-rounds", type=int, help="in-process timings per operation")
    parser.add_argument("--scale-rows", type=int, help="rows in the big table (full 1000000, quick 100000)")
    parser.add_argument(
        "--foreign-limit",
        type=float,
        default=0.15,
        help="cores other processes may use during a run before it is run again (default 0.15)",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed run (default 2)")
    parser.add_argument(
        "--max-wait", type=float, help="seconds to wait for quiet before a run (full 120, quick 10)"
    )
    parser.add_argument(
        "--pgstore-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra setting for the pgstore app, e.g. pgstore.synchronous_commit=false",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run pyramid_pgstore as it was at this git ref (say, the previous release)"
        " as backend pgstore-base, on a table of its own",
    )
    parser.add_argument(
        "--counts-requests", type=int, help="counted requests per endpoint and backend (full 100, quick 20)"
    )
    parser.add_argument(
        "--counts-runs", type=int, help="whole count runs, to show they repeat (full 2, quick 1)"
    )
    parser.add_argument("--skip", action="append", default=[], choices=("matrix", "micro", "scale", "counts"))
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (2 if quick else 5)
    args.duration = args.duration or (1 if quick else 5)
    args.warmup = args.warmup or (1 if quick else 2)
    args.micro_rounds = args.micro_rounds or (500 if quick else 4000)
    args.scale_rows = args.scale_rows or (100_000 if quick else 1_000_000)
    args.max_wait = args.max_wait if args.max_wait is not None else (10 if quick else 120)
    args.counts_requests = args.counts_requests or (20 if quick else 100)
    args.counts_runs = args.counts_runs or (1 if quick else 2)
    if args.sessions < 1 or args.reps < 1:
        parser.error("--sessions and --reps must be at least 1")
    return args


def stop_on_signals() -> None:
    """Ctrl-C raises KeyboardInterrupt even if started with SIGINT ignored (as
    background jobs are); SIGTERM and SIGHUP unwind the same way, so every
    server is stopped on the way out."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run bench/setup.sh (apt-get install wrk)")
    if "counts" not in args.skip and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: run bench/setup.sh (apt-get install valgrind)")
    stop_on_signals()
    started = time.monotonic()
    library = report.library_version()  # before the run: the code the servers load
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgstore-bench-")))
        dsn = stack.enter_context(postgres(tmp / "pg")).dsn(DATABASE)
        redis_url = stack.enter_context(redis_server(tmp))
        floor.create_table(dsn)
        lean.create_table(dsn)
        facts = pg_facts(dsn)
        if args.baseline:
            report.export_package(args.baseline, tmp / "baseline")
            facts["baseline"] = f"{args.baseline} ({report.describe_ref(args.baseline)})"
        env = {
            **os.environ,
            "BENCH_SECRET": secrets.token_urlsafe(48),
            "BENCH_DSN": dsn,
            "BENCH_REDIS_URL": redis_url,
            "BENCH_TIMEOUT": str(TIMEOUT),
            "BENCH_PGSTORE": ";".join(args.pgstore_setting),
        }
        backends = start_backends(stack, env, tmp, args)
        log(
            f"{args.sessions} sessions per backend created and checked;"
            f" servers up in {time.monotonic() - started:.0f} s"
        )
        results = None if "matrix" in args.skip else run_matrix(backends, dsn, args)
        micro = None if "micro" in args.skip else run_micro(dsn, redis_url, args)
        scale = None
        if "scale" not in args.skip:
            pg_env = {**env, "BENCH_BACKEND": "pgstore"}
            scale = run_scale(dsn, pg_env, backends["pgstore"], tmp, args)

    counted = None
    if "counts" not in args.skip:
        counted = counts.measure(counts.options(args), log)

    report.print_header(args, facts, library)
    report.print_sections(results, micro, scale, counted)
    print(f"\ntotal time {time.monotonic() - started:.0f} s, of which {WAITED[0]:.0f} s waiting for quiet")
    if args.json:
        report.write_json(args.json, args, facts, results, micro, scale, counted)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
