"""The processes the benchmarks start, and the CPU the rest of the machine uses meanwhile.

Everything listens on 127.0.0.1, is started here and is stopped on the way
out, Ctrl-C included: PostgreSQL through
:class:`~pytest_pgstore.localdb.LocalPostgres` (as an unprivileged user
when run as root, data in a temporary directory), a redis-server and one
WSGI server per backend, each of these two in a process group of its own,
and wrk for the load (``rotate.lua`` rotates the session cookies). In-process
load runs in :class:`LoadThreads`.

The machine is shared: 2 cores, and another job's ``pytest -n 2`` takes both.
So every measured run is paired with the CPU that processes the harness did
not start used during it (:func:`foreign_load`), and a run first waits for
quiet (:func:`wait_until_quiet`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import psutil

from pytest_pgstore.localdb import LocalPostgres, free_port

BENCH = Path(__file__).resolve().parent
DATABASE = "bench"  # the database postgres() creates


def log(message: str) -> None:
    """A progress line on stderr, time-stamped (stdout carries the results)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- whose CPU ------------------------------------------------------------------

# Process trees started by the harness (servers, redis, the postmaster): the
# CPU they use is ours; the rest of the machine's is someone else's.
OWN_ROOTS: list[int] = []
WAITED = [0.0]  # seconds spent waiting for quiet, over the whole run


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def _own_times() -> dict[int, float]:
    procs = [psutil.Process()]
    for root in OWN_ROOTS:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(root)
            procs += [parent, *parent.children(recursive=True)]
    times = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            cpu = proc.cpu_times()
            times[proc.pid] = cpu.user + cpu.system
    return times


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: wrk
    return usage.ru_utime + usage.ru_stime


def foreign_load(run: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``run()``; return its result and the cores other processes used meanwhile.

    On this shared 2-core machine, another job's test suite running at the
    same time would silently change the numbers; this makes it visible.
    """
    own_before, busy_before, reaped_before = _own_times(), _busy_seconds(), _children_seconds()
    started = time.monotonic()
    result = run()
    elapsed = time.monotonic() - started
    own_after, busy_after, reaped_after = _own_times(), _busy_seconds(), _children_seconds()
    own = sum(own_after[pid] - own_before[pid] for pid in own_before if pid in own_after)
    own += reaped_after - reaped_before
    return result, max(0.0, (busy_after - busy_before - own) / elapsed)


def wait_until_quiet(args: argparse.Namespace) -> float:
    """Wait until other processes use under ``args.foreign_limit`` cores, at
    most ``args.max_wait`` s per run and 5 times that in all; return the load
    last seen."""
    waited = 0.0
    while True:
        _, load = foreign_load(lambda: time.sleep(0.3))
        if load <= args.foreign_limit or waited >= args.max_wait or WAITED[0] >= 5 * args.max_wait:
            return load
        if waited == 0:
            log(f"other processes use {load:.2f} cores; waiting up to {args.max_wait:.0f} s for quiet")
        time.sleep(2)
        waited += 2.3
        WAITED[0] += 2.3


# -- processes ------------------------------------------------------------------


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Call ``check`` every 0.1 s until it returns true (an OSError counts as
    not yet); RuntimeError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[Any], name: str, grace: float = 10.0) -> None:
    """SIGTERM the process's group (it was started in a session of its own), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log(f"{name} ignored SIGTERM; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


@contextlib.contextmanager
def spawned(argv: list[str], name: str, logfile: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    """``argv`` in a session of its own, output appended to ``logfile``, its
    process tree counted as ours; stopped (:func:`stop_process`) on the way out."""
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    OWN_ROOTS.append(proc.pid)
    try:
        yield proc
    finally:
        stop_process(proc, name)
        OWN_ROOTS.remove(proc.pid)


@contextlib.contextmanager
def postgres(base: Path, say: Callable[[str], Any] = log) -> Iterator[LocalPostgres]:
    """A throwaway PostgreSQL in ``base`` holding an empty database
    :data:`DATABASE` (``server.dsn(DATABASE)``); progress lines go to ``say``.

    ``fsync`` is on, named so that a default of LocalPostgres cannot change
    what is measured. ``synchronous_commit`` is left out of the command line,
    which would override the ``ALTER SYSTEM`` the matrix switches it with.
    While it runs, its postmaster's process tree counts as ours. Stopped with
    ``-m fast`` on the way out; if it had stopped by itself, the end of its
    log is said instead.
    """
    server = LocalPostgres(base, settings={"fsync": "on"}, log=say)
    postmaster = None
    try:
        server.start()
        postmaster = server.pid
        OWN_ROOTS.append(postmaster)
        server.create_database(DATABASE)
        yield server
    finally:
        if postmaster is not None:
            OWN_ROOTS.remove(postmaster)
        if server.running:
            server.stop("fast")
        elif postmaster is not None:
            tail = server.log_tail().replace("\n", "\n  ")
            say(f"PostgreSQL had already stopped; the end of its log:\n  {tail}")


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1; yields its URL.

    Durability like synchronous_commit = off: an append-only file fsynced
    every second (a crash loses at most about a second), no RDB snapshots
    (their fork would land in the middle of a measurement).
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is missing: run bench/setup.sh (apt-get install redis-server)")
    port = free_port()
    workdir = tmp / "redis"
    workdir.mkdir()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
    argv += ["--appendfsync", "everysec", "--dir", str(workdir), "--protected-mode", "yes"]
    with spawned(argv, "redis-server", workdir / "redis.log"):
        wait_for(lambda: _redis_ping(port), "redis-server")
        log(f"redis-server on 127.0.0.1:{port}")
        yield f"redis://127.0.0.1:{port}/0"
    log("redis-server stopped")


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def http_get(port: int, path: str, cookie: str | None = None) -> tuple[int, str, str | None]:
    """GET ``path`` on 127.0.0.1:``port``: status, body and Set-Cookie header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        body = response.read().decode()
        set_cookie = response.getheader("Set-Cookie")
        return response.status, body, set_cookie
    finally:
        conn.close()


@contextlib.contextmanager
def app_server(name: str, env: dict[str, str], tmp: Path, args: argparse.Namespace) -> Iterator[int]:
    """One WSGI server (``args.server``) of ``apps.make_app`` for one backend,
    configured by ``env``; yields its port once ``/untouched`` answers."""
    port = free_port()
    bindir = Path(sys.executable).parent
    if args.server == "gunicorn":
        argv = [str(bindir / "gunicorn"), "--pythonpath", str(BENCH), "-k", "sync"]
        argv += ["-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--backlog", "2048"]
        # Heartbeat files in memory, as gunicorn advises.
        argv += ["--worker-tmp-dir", "/dev/shm", "--log-level", "warning", "apps:make_app()"]  # noqa: S108
    else:
        argv = [str(bindir / "waitress-serve"), f"--listen=127.0.0.1:{port}", f"--threads={args.threads}"]
        argv += ["--call", "apps:make_app"]
        env = {**env, "PYTHONPATH": str(BENCH)}
    with spawned(argv, name, tmp / f"{name}.log", env=env) as proc:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} server exited; see {tmp / (name + '.log')}")
            return http_get(port, "/untouched")[0] == 200

        wait_for(up, f"the {name} server")
        yield port


# -- load -----------------------------------------------------------------------


class LoadThreads:
    """``count`` threads, each running :meth:`loop` with its own seed while
    the ``with`` block runs; leaving it sets :attr:`stop` and joins them (at
    most :attr:`join_timeout` seconds each, None: as long as it takes)."""

    join_timeout: float | None = None

    def __init__(self, count: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(seed,)) for seed in range(count)]

    def loop(self, seed: int) -> None:
        """One thread's work: run until :attr:`stop` is set."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.join_timeout)


def wrk_command(
    port: int, path: str, cookie_file: Path, seconds: int, threads: int, connections: int, instance: str = ""
) -> list[str]:
    """wrk on 127.0.0.1:``port`` for ``seconds``, each request to ``path``
    with the next cookie of ``cookie_file``; ``instance`` (a number) makes
    this wrk start at its own place in the file."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    argv += ["--timeout", "5s", "-s", str(BENCH / "rotate.lua"), f"http://127.0.0.1:{port}"]
    return [*argv, "--", path, str(cookie_file), *([instance] if instance else [])]


def wrk_summary(returncode: int | None, stdout: str, stderr: str) -> dict[str, Any]:
    """The JSON line ``rotate.lua`` prints at the end of a wrk run.

    :raises RuntimeError: wrk failed or printed none.
    """
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({returncode}): {stdout[-2000:]} {stderr[-2000:]}")
    return json.loads(lines[-1])


def wrk(port: int, path: str, cookie_file: Path, duration: int, args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run (``args.wrk_threads`` threads, ``args.connections``
    connections): its summary plus ``rps`` and ``errors`` (not counting
    connect errors)."""
    argv = wrk_command(port, path, cookie_file, duration, args.wrk_threads, args.connections)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, start_new_session=True)
    result = wrk_summary(done.returncode, done.stdout, done.stderr)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("read_errors", "write_errors", "status_errors", "timeouts"))
    return result
