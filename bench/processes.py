"""Throughput of one app process against three, on one database (issue 7).

Starts a throwaway PostgreSQL on 127.0.0.1 (pytest_pgstore.localdb's
LocalPostgres, data in a temp dir, as an unprivileged user under root) unless
``--dsn`` names one, and three app processes: ``demo/api.py``,
waitress with 4 threads and a pool of 4 each, the app the three-process test
serves (run it with make's ``.venv``, which can import the checkout's ``demo/``).
It logs in 300 sessions, then drives three endpoints with the same load
generator in both layouts, one after the other within each round:

* one process: three wrk instances (1 thread, 4 connections each), all
  aimed at process A;
* three processes: the same three wrk instances, one aimed at each of A, B, C.

Endpoints: ``/ping`` (never touches the session: the Python and HTTP floor),
``/read`` (one SELECT) and ``/incr`` (SELECT + INSERT ... ON CONFLICT), every
request carrying the next of the 300 session cookies. It also reports where
the CPU went during each run (app processes, PostgreSQL, wrk, the rest of
the machine), which is what limits throughput on a small machine. With
``--unlogged`` it then makes the table UNLOGGED and measures ``/incr`` again.

Usage: .venv/bin/python bench/processes.py [--duration S] [--rounds N] [--dsn DSN] [--unlogged]
Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
from servers import DATABASE, postgres, wrk_command, wrk_summary

from demo import api

SESSIONS = 300
WRK_INSTANCES = 3
CONNECTIONS_EACH = 4
ENDPOINTS = ("/ping", "/read", "/incr")
# A run during which the rest of the machine kept more than this many cores
# busy is measured again, up to RETRIES times (and marked * if still so).
DISTURBED = 0.1
RETRIES = 3

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle, all cores, since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / TICKS


class CpuMeter:
    """CPU used by the app processes, PostgreSQL (postmaster and children),
    wrk (our waited-for children) and everything else, over one run."""

    def __init__(self, app_pids: list[int], postmaster: int | None) -> None:
        self.app_pids = app_pids
        self.postmaster = postmaster

    def _pg_pids(self) -> list[int]:
        return [self.postmaster, *children_of(self.postmaster)] if self.postmaster else []

    def sample(self) -> dict[str, float]:
        pg = self._pg_pids()
        return {
            "app": sum(cpu_seconds(p) for p in self.app_pids),
            "pg": {p: cpu_seconds(p) for p in pg},
            "wrk": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]),
            "machine": machine_busy_seconds(),
        }

    @staticmethod
    def used(before: dict, after: dict, seconds: float) -> dict[str, float]:
        """Cores busy on average, by who."""
        pg = sum(after["pg"][p] - before["pg"].get(p, 0.0) for p in after["pg"])
        app = after["app"] - before["app"]
        wrk = after["wrk"] - before["wrk"]
        machine = after["machine"] - before["machine"]
        cores = {"app": app, "postgres": pg, "wrk": wrk, "other": max(0.0, machine - app - pg - wrk)}
        return {name: value / seconds for name, value in cores.items()}


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[tuple[str, int | None]]:
    """(DSN, postmaster pid or None): the given server, or a throwaway one."""
    if dsn:
        yield dsn, None
        return
    with (
        tempfile.TemporaryDirectory(prefix="pgstore-bench-processes-") as var,
        postgres(Path(var) / "pg") as server,
    ):
        yield server.dsn(DATABASE), server.pid


def login_sessions(server: api.Process, count: int) -> list[str]:
    """Log ``count`` users in on ``server``; their cookies, as name=value."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    cookies = []
    for i in range(count):
        conn.request("GET", f"/login?user=user{i}")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"login failed: {response.status}")
        cookies.append(response.getheader("Set-Cookie").split(";", 1)[0])
    conn.close()
    return cookies


def run_wrk(targets: list[int], path: str, duration: float, cookies: Path) -> list[dict]:
    """One wrk instance per target port (1 thread, CONNECTIONS_EACH
    connections, instance i starting at its own cookie), all at once; their
    summaries."""
    procs = [
        subprocess.Popen(
            wrk_command(port, path, cookies, round(duration), 1, CONNECTIONS_EACH, str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, port in enumerate(targets)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration + 60)
        results.append(wrk_summary(proc.returncode, out, err))
    return results


def summarize(results: list[dict]) -> dict[str, float]:
    """The instances of one run as one: total req/s, errors, worst p50 and p99."""
    seconds = max(r["duration_us"] for r in results) / 1e6
    return {
        "rps": sum(r["requests"] for r in results) / seconds,
        "errors": sum(
            r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] + r["status_errors"]
            for r in results
        ),
        "p50_ms": max(r["p50_us"] for r in results) / 1000,
        "p99_ms": max(r["p99_us"] for r in results) / 1000,
    }


@contextlib.contextmanager
def app_processes(dsn: str, work: Path) -> Iterator[list[api.Process]]:
    """Three ``demo/api.py`` processes on ``dsn`` (waitress 4
    threads, pool_max 4, one shared secret); stopped on the way out."""
    env = {
        "PGSTORE_DSN": dsn,
        "PGSTORE_SECRET": secrets.token_urlsafe(48),
        "PGSTORE_POOL_MAX": "4",
        "WSGI_THREADS": "4",
    }
    processes = api.start(3, env, work)
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


def measure(meter: CpuMeter, targets: list[int], path: str, duration: int, cookies: Path) -> dict:
    """One run: throughput, latency, errors, and where the CPU went."""
    before = meter.sample()
    started = time.monotonic()
    result = summarize(run_wrk(targets, path, duration, cookies))
    result["cores"] = CpuMeter.used(before, meter.sample(), time.monotonic() - started)
    return result


def run_plan(
    plan: list[tuple[str, str]],
    layouts: dict[str, list[int]],
    meter: CpuMeter,
    cookies: Path,
    dsn: str,
    args: argparse.Namespace,
) -> dict[tuple[str, str], list[dict]]:
    """Each (path, label) of ``plan`` after a warm-up, ``args.rounds`` times
    in every layout; a run disturbed by other load is measured again (up to
    RETRIES times). The label ``unlogged`` first makes the table UNLOGGED."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for path, label in plan:
        if label == "unlogged":
            set_unlogged(dsn)
        run_wrk(layouts["3 processes"], path, 1, cookies)  # warm-up
        for _ in range(args.rounds):
            for layout, targets in layouts.items():
                for _attempt in range(1 + RETRIES):
                    result = measure(meter, targets, path, args.duration, cookies)
                    if result["cores"]["other"] <= DISTURBED:
                        break
                    print(f"  {label} {layout}: disturbed (other load), measuring again", flush=True)
                runs.setdefault((label, layout), []).append(result)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every run (default 2; median shown)")
    parser.add_argument("--dsn", default=os.environ.get("PGSTORE_DSN", ""), help="an existing database")
    parser.add_argument("--unlogged", action="store_true", help="then /incr again on an UNLOGGED table")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    with (
        database(args.dsn) as (dsn, postmaster),
        tempfile.TemporaryDirectory() as tmp,
        app_processes(dsn, Path(tmp)) as processes,
    ):
        cookies = Path(tmp) / "cookies.txt"
        cookies.write_text("\n".join(login_sessions(processes[0], SESSIONS)) + "\n")
        layouts = {
            "1 process": [processes[0].port] * WRK_INSTANCES,
            "3 processes": [process.port for process in processes],
        }
        print(
            f"{WRK_INSTANCES} wrk x 1 thread x {CONNECTIONS_EACH} connections, "
            f"{args.duration:g} s a run, "
            f"{args.rounds} rounds (median), {SESSIONS} sessions; waitress 4 threads, pool_max 4 each; "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        plan = [(path, path) for path in ENDPOINTS]
        if args.unlogged:
            plan.append(("/incr", "unlogged"))
        meter = CpuMeter([process.pid for process in processes], postmaster)
        runs = run_plan(plan, layouts, meter, cookies, dsn, args)
        report(runs, args.rounds, [label for _, label in plan])


def set_unlogged(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE http_sessions SET UNLOGGED")
    conn.close()


def report(runs: dict[tuple[str, str], list[dict]], rounds: int, labels: list[str]) -> None:
    """The table (median round of each endpoint and layout) and the 3 / 1 process ratios."""
    print()
    header = (
        f"{'endpoint':8} {'layout':12} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}   cores busy"
    )
    print(header)
    print("-" * (len(header) + 40))
    medians = {}
    for (path, layout), results in runs.items():
        median = statistics.median(r["rps"] for r in results)
        medians[path, layout] = median
        best = min(results, key=lambda r: abs(r["rps"] - median))
        cores = " ".join(f"{name} {value:.2f}" for name, value in best["cores"].items())
        if any(r["cores"]["other"] > DISTURBED for r in results):
            cores += " *"
        each = "/".join(f"{r['rps']:.0f}" for r in results) if rounds > 1 else ""
        print(
            f"{path:8} {layout:12} {median:8.0f} {best['p50_ms']:7.1f} {best['p99_ms']:7.1f} "
            f"{sum(r['errors'] for r in results):6d}   {cores}   {each}"
        )
    print("* a round stayed disturbed by other load on the machine")
    print()
    for label in labels:
        one, three = medians[label, "1 process"], medians[label, "3 processes"]
        print(f"{label}: 3 processes / 1 process = {three / one:.2f}")


if __name__ == "__main__":
    main()
