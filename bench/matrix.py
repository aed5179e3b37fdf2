"""The backend × endpoint matrix: every backend under the same load, interleaved.

Each backend gets a WSGI server of its own and ``--sessions`` sessions made
through its own ``/write`` (and checked through ``/read``: a backend that
lost its sessions would make the comparison meaningless). A repetition runs
four blocks, ``untouched``, ``read``, ``write`` with ``synchronous_commit``
on and ``write`` with it off (server-wide, :func:`set_synchronous_commit`);
within a block every backend runs once, and repetition *r* starts with the
*r*-th backend, so none is always first. The report compares backends by
req/s ratios within one repetition, which on this shared machine disagree
far less than the req/s themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from servers import app_server, foreign_load, http_get, log, wait_until_quiet, wrk

BACKENDS = ("cookie", "redis", "redis-lru", "lean", "floor", "pgstore", "pgstore-prep")
# With --baseline REF: pyramid_pgstore as it was at REF (its package on
# PYTHONPATH, ahead of the installed one), on a table of its own.
BASELINE = "pgstore-base"


def backend_names(args: argparse.Namespace) -> tuple[str, ...]:
    return (*BACKENDS, BASELINE) if getattr(args, "baseline", None) else BACKENDS


RATIO_TO = ("cookie", "lean", "floor", "redis", "redis-lru")
# (endpoint, synchronous_commit): reads write nothing, so they run once, with
# the server default (on); the write endpoint runs under both settings.
BLOCKS = (("untouched", "on"), ("read", "on"), ("write", "on"), ("write", "off"))
TIMEOUT = 86400  # session idle timeout: no session expires or needs a refresh during a run

# Per block, per backend: one wrk summary per repetition.
Results = dict[tuple[str, str], dict[str, list[dict[str, Any]]]]


@dataclass
class Backend:
    """One backend's running server and the sessions made on it."""

    name: str
    port: int
    cookies: list[str]  # name=value, as a browser sends them
    cookie_file: Path  # the same, one a line, for rotate.lua


def start_backends(
    stack: contextlib.ExitStack, env: dict[str, str], tmp: Path, args: argparse.Namespace
) -> dict[str, Backend]:
    """A server per backend (stopped when ``stack`` closes), each with
    ``args.sessions`` sessions created and checked."""
    backends = {}
    for name in backend_names(args):
        backend_env = {**env, "BENCH_BACKEND": name}
        if name == BASELINE:
            backend_env["PYTHONPATH"] = str(tmp / "baseline")
        port = stack.enter_context(app_server(name, backend_env, tmp, args))
        cookies = create_sessions(port, args.sessions)
        check_sessions(name, port, cookies)
        cookie_file = tmp / f"{name}.cookies"
        cookie_file.write_text("\n".join(cookies) + "\n")
        backends[name] = Backend(name, port, cookies, cookie_file)
    return backends


def create_sessions(port: int, count: int) -> list[str]:
    """``count`` sessions made through the backend's own /write; their cookies."""

    def one(_: int) -> str:
        status, _body, set_cookie = http_get(port, "/write")
        if status != 200 or not set_cookie:
            raise RuntimeError(f"/write on port {port} gave {status} and no cookie")
        return set_cookie.split(";", 1)[0]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def check_sessions(name: str, port: int, cookies: list[str]) -> None:
    """Every backend must find its sessions, or the comparison means nothing."""
    for cookie in cookies[:: max(1, len(cookies) // 25)]:
        status, body, _ = http_get(port, "/read", cookie)
        if status != 200 or not body.startswith("user-"):
            raise RuntimeError(f"{name}: /read with a created session gave {status} {body!r}")


def measured(port: int, path: str, cookie_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One recorded wrk run, started when the machine is quiet, run again (up
    to ``args.retries`` times) if other processes took more than
    ``args.foreign_limit`` cores during it; the least disturbed run is kept."""
    attempts = []
    for _ in range(1 + args.retries):
        wait_until_quiet(args)
        result, load = foreign_load(lambda: wrk(port, path, cookie_file, args.duration, args))
        result["foreign_cores"] = load
        attempts.append(result)
        if load <= args.foreign_limit:
            break
        log(f"other processes used {load:.2f} cores during that run; running it again")
    return min(attempts, key=lambda r: r["foreign_cores"])


def set_synchronous_commit(dsn: str, value: str) -> str:
    """Set it server-wide (ALTER SYSTEM + reload): pooled connections follow
    at their next statement. Returns what a new connection now sees."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"ALTER SYSTEM SET synchronous_commit = '{value}'")
            cur.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)
    finally:
        conn.close()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW synchronous_commit")
            seen = cur.fetchone()[0]
    finally:
        conn.close()
    if seen != value:
        raise RuntimeError(f"synchronous_commit is {seen}, wanted {value}")
    return seen


def pg_facts(dsn: str) -> dict[str, str]:
    """The server settings the report states: version, durability, memory."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            facts = {}
            for name in (
                "server_version",
                "synchronous_commit",
                "fsync",
                "wal_sync_method",
                "shared_buffers",
            ):
                cur.execute(f"SHOW {name}")
                facts[name] = cur.fetchone()[0]
            return facts
    finally:
        conn.close()


def run_matrix(backends: dict[str, Backend], dsn: str, args: argparse.Namespace) -> Results:
    """Every block, every backend, ``args.reps`` times, backends interleaved:
    repetition r runs the backends starting at the r-th, so none is always first."""
    names = tuple(backends)
    results: Results = {block: {b: [] for b in names} for block in BLOCKS}
    log(f"warm-up: {args.warmup:g} s per backend and endpoint")
    for endpoint, _ in BLOCKS[:3]:
        for backend in names:
            wrk(backends[backend].port, "/" + endpoint, backends[backend].cookie_file, args.warmup, args)
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for block in BLOCKS:
            endpoint, sync = block
            set_synchronous_commit(dsn, sync)
            for backend in order:
                result = measured(backends[backend].port, "/" + endpoint, backends[backend].cookie_file, args)
                results[block][backend].append(result)
                log(f"rep {rep + 1}/{args.reps} {endpoint:9s} sc={sync:3s} {backend:12s}" + _run_note(result))
    set_synchronous_commit(dsn, "on")
    return results


def _run_note(result: dict[str, Any]) -> str:
    """The end of a run's progress line: req/s, p99, errors, foreign load."""
    note = f" {result['rps']:8.0f} req/s  p99 {result['p99_us'] / 1000:6.2f} ms"
    if result["errors"]:
        note += f"  ERRORS {result['errors']}"
    if result["foreign_cores"] > 0.05:
        note += f"  (others used {result['foreign_cores']:.2f} cores)"
    return note
