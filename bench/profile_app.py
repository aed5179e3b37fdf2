"""Where a request's time goes, in one process, without an HTTP server.

Starts a throwaway PostgreSQL (as bench/run.py does), builds the benchmark app for
``floor`` and ``pgstore`` in this process, creates sessions through /write,
then (1) times whole WSGI requests to each endpoint, backends interleaved, and
(2) profiles one backend and endpoint with cProfile.

Usage: .venv/bin/python bench/profile_app.py [--backend pgstore] [--endpoint read] [--requests 5000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import apps
import floor
from servers import DATABASE, postgres
from webob import Request


def call(app: Any, path: str, cookie: str | None) -> tuple[int, str, str | None]:
    request = Request.blank(path, headers={"Cookie": cookie} if cookie else {})
    response = request.get_response(app)
    return response.status_code, response.text, response.headers.get("Set-Cookie")


def time_requests(built: dict[str, Any], cookies: dict[str, list[str]], args: argparse.Namespace) -> None:
    """Print the median time of a whole WSGI request per endpoint and
    backend, backends alternately first, and pgstore's time over floor's."""
    print(f"in-process WSGI request, microseconds (median of {args.requests}, interleaved):")
    for endpoint in ("untouched", "read", "write"):
        times: dict[str, list[float]] = {name: [] for name in built}
        for i in range(args.requests):
            for name in built if i % 2 else reversed(built):
                cookie = cookies[name][i % args.sessions]
                started = time.perf_counter_ns()
                call(built[name], "/" + endpoint, cookie)
                times[name].append((time.perf_counter_ns() - started) / 1000)
        cells = "  ".join(f"{name} {statistics.median(t):7.1f}" for name, t in times.items())
        ratio = statistics.median(times["pgstore"]) / statistics.median(times["floor"])
        print(f"  {endpoint:9s} {cells}  pgstore/floor time {ratio:.2f}")


def profile(app: Any, jar: list[str], args: argparse.Namespace) -> None:
    """Print cProfile's 30 costliest functions, by own time, over
    ``args.requests`` requests to ``args.endpoint``."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(args.requests):
        call(app, "/" + args.endpoint, jar[i % args.sessions])
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(30)
    print(f"\ncProfile, {args.backend} /{args.endpoint}, {args.requests} requests, by own time:")
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="pgstore", choices=("floor", "pgstore"))
    parser.add_argument("--endpoint", default="read", choices=("untouched", "read", "write"))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgstore-profile-") as tmp, postgres(Path(tmp) / "pg") as server:
        dsn = server.dsn(DATABASE)
        floor.create_table(dsn)
        env = {**os.environ, "BENCH_SECRET": secrets.token_urlsafe(48), "BENCH_DSN": dsn}
        built = {name: apps.make_app({**env, "BENCH_BACKEND": name}) for name in ("floor", "pgstore")}
        cookies = {
            name: [call(app, "/write", None)[2].split(";")[0] for _ in range(args.sessions)]
            for name, app in built.items()
        }
        time_requests(built, cookies, args)
        profile(built[args.backend], cookies[args.backend], args)


if __name__ == "__main__":
    main()
