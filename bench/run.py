"""Session backends side by side: cookie, redis, redis-lru, floor and pgstore (issue 5).

Starts on 127.0.0.1 a throwaway PostgreSQL (as an unprivileged user when run
as root, through pytest_pgstore's launcher, data in a temp dir), a throwaway
redis-server, and one gunicorn server per backend; creates the sessions
through each backend's own /write endpoint; drives /untouched, /read and
/write with wrk, rotating over the sessions, backends interleaved within each
repetition; then times PGStore against raw psycopg2 in-process (micro) and
reads at 1,000 vs 1,000,000 rows (scale). Everything it started is stopped on
exit, Ctrl-C included.

Usage: .venv/bin/python bench/run.py [--quick] [--reps N] [--duration S] ...
(``make bench`` runs the full version; ``bench/setup.sh`` installs wrk,
redis-server and the Python packages.)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import inspect
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import redis
from psycopg2.pool import SimpleConnectionPool

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import floor  # noqa: E402

from pyramid_pgstore import store as pgstore_store  # noqa: E402
from pyramid_pgstore.cookie import RotatingSigner  # noqa: E402
from pyramid_pgstore.store import PGStore, storage_key  # noqa: E402
from pytest_pgstore.pg_ctl import (  # noqa: E402
    PG_CTL_ENV,
    RUN_AS_ENV,
    default_run_as_user,
    find_pg_ctl,
    launcher_path,
)

BACKENDS = ("cookie", "redis", "redis-lru", "floor", "pgstore", "pgstore-prep")
RATIO_TO = ("cookie", "floor", "redis", "redis-lru")
# (endpoint, synchronous_commit): reads write nothing, so they run once, with
# the server default (on); the write endpoint runs under both settings.
BLOCKS = (("untouched", "on"), ("read", "on"), ("write", "on"), ("write", "off"))
TIMEOUT = 86400  # session idle timeout: no session expires or needs a refresh during a run


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------

# Process trees started by the harness (servers, redis, the postmaster): the
# CPU they use is ours; the rest of the machine's is someone else's.
OWN_ROOTS: list[int] = []


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


WAITED = [0.0]  # seconds spent waiting for quiet, over the whole run


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
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
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    OWN_ROOTS.append(proc.pid)
    try:
        yield proc
    finally:
        stop_process(proc, name)
        OWN_ROOTS.remove(proc.pid)


def _pg_ctl(env: dict[str, str], *args: str) -> None:
    subprocess.run([launcher_path(), *args], check=True, stdout=subprocess.DEVNULL, env=env, timeout=120)


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1, as ``pyramid_pgstore.demo.serve`` starts one.

    Yields the DSN of database ``bench``. Stopped (``-m fast``) on the way out.
    """
    env = dict(os.environ)
    env[PG_CTL_ENV] = find_pg_ctl(os.environ.get("PGSTORE_PG_BINDIR", ""))
    if os.geteuid() == 0:
        env[RUN_AS_ENV] = os.environ.get(RUN_AS_ENV) or default_run_as_user()
    data = tmp / "pg" / "data"
    data.parent.mkdir(parents=True)
    _pg_ctl(env, "initdb", "--pgdata", str(data), "-o", "--auth=trust --username=postgres --encoding=UTF8")
    port = free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{data.parent}'"
    pg_log = data.parent / "postgresql.log"
    _pg_ctl(env, "start", "-w", "-D", str(data), "-o", options, "-l", str(pg_log))
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    OWN_ROOTS.append(postmaster)
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE bench")
        admin.close()
        log(f"PostgreSQL on 127.0.0.1:{port}, data in {data}")
        yield f"host=127.0.0.1 port={port} user=postgres dbname=bench"
    finally:
        OWN_ROOTS.remove(postmaster)
        if (data / "postmaster.pid").exists():
            _pg_ctl(env, "stop", "-D", str(data), "-m", "fast")
            log("PostgreSQL stopped")
        else:
            tail = pg_log.read_text(errors="replace").splitlines()[-15:] if pg_log.exists() else []
            log("PostgreSQL had already stopped; the end of its log:\n  " + "\n  ".join(tail))


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1.

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


def _http(port: int, path: str, cookie: str | None = None) -> tuple[int, str, str | None]:
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
    """One WSGI server for one backend; yields its port."""
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
            return _http(port, "/untouched")[0] == 200

        wait_for(up, f"the {name} server")
        yield port


# -- load -----------------------------------------------------------------------


def create_sessions(port: int, count: int) -> list[str]:
    """``count`` sessions made through the backend's own /write; their cookies."""

    def one(_: int) -> str:
        status, _body, set_cookie = _http(port, "/write")
        if status != 200 or not set_cookie:
            raise RuntimeError(f"/write on port {port} gave {status} and no cookie")
        return set_cookie.split(";", 1)[0]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def check_sessions(name: str, port: int, cookies: list[str]) -> None:
    """Every backend must find its sessions, or the comparison means nothing."""
    for cookie in cookies[:: max(1, len(cookies) // 25)]:
        status, body, _ = _http(port, "/read", cookie)
        if status != 200 or not body.startswith("user-"):
            raise RuntimeError(f"{name}: /read with a created session gave {status} {body!r}")


def wrk(port: int, path: str, cookie_file: Path, duration: int, args: argparse.Namespace) -> dict[str, Any]:
    argv = ["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{duration}s"]
    argv += ["--timeout", "5s", "-s", str(BENCH / "rotate.lua"), f"http://127.0.0.1:{port}"]
    argv += ["--", path, str(cookie_file)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, start_new_session=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("read_errors", "write_errors", "status_errors", "timeouts"))
    return result


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


def run_matrix(
    ports: dict[str, int], cookie_files: dict[str, Path], dsn: str, args: argparse.Namespace
) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    """Every block, every backend, ``args.reps`` times, backends interleaved:
    repetition r runs the backends starting at the r-th, so none is always first."""
    results: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {
        block: {b: [] for b in BACKENDS} for block in BLOCKS
    }
    log(f"warm-up: {args.warmup:g} s per backend and endpoint")
    for endpoint, _ in BLOCKS[:3]:
        for backend in BACKENDS:
            wrk(ports[backend], "/" + endpoint, cookie_files[backend], args.warmup, args)
    for rep in range(args.reps):
        order = BACKENDS[rep % len(BACKENDS) :] + BACKENDS[: rep % len(BACKENDS)]
        for block in BLOCKS:
            endpoint, sync = block
            set_synchronous_commit(dsn, sync)
            for backend in order:
                result = measured(ports[backend], "/" + endpoint, cookie_files[backend], args)
                results[block][backend].append(result)
                log(
                    f"rep {rep + 1}/{args.reps} {endpoint:9s} sc={sync:3s} {backend:12s}"
                    f" {result['rps']:8.0f} req/s  p99 {result['p99_us'] / 1000:6.2f} ms"
                    + (f"  ERRORS {result['errors']}" if result["errors"] else "")
                    + (
                        f"  (others used {result['foreign_cores']:.2f} cores)"
                        if result["foreign_cores"] > 0.05
                        else ""
                    )
                )
    set_synchronous_commit(dsn, "on")
    return results


# -- micro ------------------------------------------------------------------------


def _time_ops(ops: dict[str, Callable[[int], Any]], rounds: int) -> dict[str, list[float]]:
    """Microseconds per call of each op, ops interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    clock = time.perf_counter_ns
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            op = ops[name]
            started = clock()
            op(i)
            times[name].append((clock() - started) / 1000)
    return times


# Each PGStore operation and the plain-cursor run of its very statement text.
MICRO_PAIRS = {
    "PGStore.load": "raw cursor, same SELECT",
    "PGStore.save_serialized (upsert)": "raw cursor, same upsert",
    "PGStore.replace_serialized (UPDATE)": "raw cursor, same UPDATE",
}


def run_micro(dsn: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """PGStore.load / save_serialized (and replace_serialized, the write of a
    loaded session, where the store has it) against the same statement on a
    plain cursor, and against other SQL, in one process."""
    count = 1000
    rounds = args.micro_rounds
    options = {"table": "micro_sessions", "pool_min": 1, "pool_max": 1}
    store = PGStore(dsn, **options)
    ids = [secrets.token_urlsafe(32) for _ in range(count)]
    keys = [storage_key(i) for i in ids]
    data = {"user": "user-0123456789ab", "csrf": secrets.token_hex(20), "n": 1}
    payload = store.serialize(data)
    for session_id in ids:
        store.save_serialized(session_id, payload, TIMEOUT)
    # The plain cursor runs on the store's own (only) connection, idle in its
    # pool between operations: a second connection would be a second server
    # process, and where the scheduler puts each process changes a loopback
    # round trip by tens of microseconds (same core or not).
    raw = store._checkout.getconn()
    store._checkout.putconn(raw)
    sql = store._sql  # the store's own statement text: the very same SQL
    # The statements of a store with synchronous_commit=False, where it has
    # that setting (built without connecting), run on the same connection.
    async_sql = None
    if "synchronous_commit" in inspect.signature(PGStore).parameters:
        async_sql = PGStore(dsn, **options, create_table=False, synchronous_commit=False)._sql
    replace = getattr(sql, "replace", None)

    # The store's statements take the lifetime as interval text (since
    # 2feb591), the floor's as a number of seconds.
    store_ttl = pgstore_store._interval(TIMEOUT) if hasattr(pgstore_store, "_interval") else TIMEOUT

    def raw_statement(statement: str, ttl: Any = store_ttl) -> Callable[[int], Any]:
        def run(i: int) -> Any:
            params = {"key": keys[i % count], "data": payload, "ttl": ttl, "offset": 0.0}
            with raw.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchone() if cur.description else None

        return run

    def checkout(i: int) -> None:
        conn = store._checkout.getconn()
        store._checkout.putconn(conn)

    floor_load = floor.LOAD.replace(floor.TABLE, "micro_sessions").replace("%s", "%(key)s")
    floor_save = floor.SAVE.replace(floor.TABLE, "micro_sessions")
    for name in ("key", "data", "ttl"):  # floor's placeholders are positional
        floor_save = floor_save.replace("%s", f"%({name})s", 1)
    loads: dict[str, Callable[[int], Any]] = {
        "PGStore.load": lambda i: store.load(ids[i % count]),
        "raw cursor, same SELECT": raw_statement(sql.load),
        "raw cursor, floor's SELECT": raw_statement(floor_load),
    }
    saves: dict[str, Callable[[int], Any]] = {
        "PGStore.save_serialized (upsert)": lambda i: store.save_serialized(ids[i % count], payload, TIMEOUT),
        "raw cursor, same upsert": raw_statement(sql.save),
        "raw cursor, floor's upsert": raw_statement(floor_save, TIMEOUT),
    }
    if replace and hasattr(store, "replace_serialized"):
        saves["PGStore.replace_serialized (UPDATE)"] = lambda i: store.replace_serialized(
            ids[i % count], payload, TIMEOUT
        )
        saves["raw cursor, same UPDATE"] = raw_statement(replace)
    if async_sql is not None:
        saves["raw cursor, upsert with SET LOCAL sc=off"] = raw_statement(async_sql.save)
    # The same statements prepared on the connection (prepare_statements=True).
    if "prepare_statements" in inspect.signature(PGStore).parameters:
        prepared_sql = pgstore_store._Statements("micro_sessions", prepare=True)
        with raw.cursor() as cur:
            for statement in (prepared_sql.load, prepared_sql.save, prepared_sql.replace):
                cur.execute(statement.prepare)
        loads["raw cursor, same SELECT prepared"] = raw_statement(prepared_sql.load.execute)
        saves["raw cursor, same upsert prepared"] = raw_statement(prepared_sql.save.execute)
        saves["raw cursor, same UPDATE prepared"] = raw_statement(prepared_sql.replace.execute)
    # What the Redis peers pay for the same operation, for scale.
    rclient = redis.Redis.from_url(redis_url)
    rkeys = ["micro:" + key for key in keys]
    for key in rkeys:
        rclient.set(key, payload)
    loads["redis GET (redis-py, for scale)"] = lambda i: rclient.get(rkeys[i % count])
    saves["redis SETEX (redis-py, for scale)"] = lambda i: rclient.setex(rkeys[i % count], TIMEOUT, payload)
    cpu = {
        "storage_key (sha256)": lambda i: storage_key(ids[i % count]),
        "pool getconn + putconn": checkout,
        "serializer.loads": lambda i: store.serializer.loads(payload),
        "serialize (dumps + size check)": lambda i: store.serialize(data),
    }
    try:
        out: dict[str, Any] = {"rounds": rounds}
        set_synchronous_commit(dsn, "on")
        out["load"] = _summarize(_time_ops(loads, rounds))
        out["save, synchronous_commit=on"] = _summarize(_time_ops(saves, max(rounds // 4, 100)))
        set_synchronous_commit(dsn, "off")
        out["save, synchronous_commit=off"] = _summarize(_time_ops(saves, rounds))
        set_synchronous_commit(dsn, "on")
        out["cpu only (no I/O)"] = _summarize(_time_ops(cpu, rounds))
        return out
    finally:
        store.close()
        rclient.close()


def _summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "median_us": statistics.median(values),
            "p99_us": _percentile(values, 99),
            "n": len(values),
        }
        for name, values in times.items()
    }


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- scale ------------------------------------------------------------------------


def run_scale(
    dsn: str,
    env: dict[str, str],
    small_port: int,
    cookies: list[str],
    cookie_file: Path,
    tmp: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Reads of the same sessions from a table of len(cookies) rows and from
    one of ``args.scale_rows`` rows, interleaved: in-process PGStore.load
    latency and HTTP /read through a second pgstore server."""
    big = "http_sessions_big"
    rows = args.scale_rows
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {big} (LIKE http_sessions INCLUDING ALL)")
        cur.execute(f"INSERT INTO {big} SELECT * FROM http_sessions")
        cur.execute("SELECT count(*) FROM http_sessions")
        small_rows = cur.fetchone()[0]
        # Filler sessions, keyed like storage_key (sha256 hex), live for a day.
        cur.execute(
            f"INSERT INTO {big} (key, data, created_on, modified_on, expires_on)"
            " SELECT encode(sha256(('filler-' || g)::bytea), 'hex'),"
            ' \'{"user":"user-\' || g || \'","csrf":"\' || md5(g::text) || \'","n":1}\','
            " now(), now(), now() + interval '1 day' FROM generate_series(1, %s) AS g",
            (rows - small_rows,),
        )
        cur.execute(f"VACUUM ANALYZE http_sessions, {big}")
        cur.execute(f"SELECT count(*), pg_size_pretty(pg_total_relation_size('{big}')) FROM {big}")
        big_rows, big_size = cur.fetchone()
    conn.close()
    log(f"scale: {big} has {big_rows} rows ({big_size}), filled in {time.monotonic() - started:.0f} s")

    signer = RotatingSigner([env["BENCH_SECRET"]])
    ids = [signer.loads(c.split("=", 1)[1].encode()) for c in cookies]
    # Both stores on one borrowed connection: two connections are two server
    # processes, and where the scheduler puts each one changes a loopback
    # round trip by tens of microseconds, more than the difference measured.
    shared = SimpleConnectionPool(1, 1, dsn)
    small = PGStore.from_pool(shared, create_table=False)
    large = PGStore.from_pool(shared, table=big, create_table=False)
    try:
        for store in (small, large):  # warm both
            for session_id in ids:
                assert store.load(session_id) is not None
        loads = {
            f"{small_rows} rows": lambda i: small.load(ids[i % len(ids)]),
            f"{big_rows} rows": lambda i: large.load(ids[i % len(ids)]),
        }
        in_process = _summarize(_time_ops(loads, args.micro_rounds * 2))
    finally:
        small.close()
        large.close()
        shared.closeall()

    http: dict[str, list[dict[str, Any]]] = {f"{small_rows} rows": [], f"{big_rows} rows": []}
    with app_server("pgstore-big", {**env, "BENCH_TABLE": big}, tmp, args) as big_port:
        check_sessions("pgstore-big", big_port, cookies)
        wrk(big_port, "/read", cookie_file, args.warmup, args)
        for rep in range(args.reps):
            pairs = [(f"{small_rows} rows", small_port), (f"{big_rows} rows", big_port)]
            for label, port in pairs if rep % 2 == 0 else pairs[::-1]:
                result = measured(port, "/read", cookie_file, args)
                http[label].append(result)
                log(f"scale rep {rep + 1}/{args.reps} {label:>14s} {result['rps']:8.0f} req/s")
    return {
        "small_rows": small_rows,
        "big_rows": big_rows,
        "big_size": big_size,
        "in_process": in_process,
        "http": http,
    }


# -- report -----------------------------------------------------------------------


def _spread(values: list[float]) -> float:
    """(max - min) / median, in percent."""
    return (max(values) - min(values)) / statistics.median(values) * 100


def _paired_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Median, min and max over repetitions of a's req/s over b's (same repetition)."""
    ratios = [x["rps"] / y["rps"] for x, y in zip(a, b, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def report(results: dict[tuple[str, str], dict[str, list[dict[str, Any]]]]) -> tuple[str, dict[str, Any]]:
    lines = []
    header = (
        f"{'endpoint':9s} {'sc':3s} {'backend':12s} {'req/s':>6s} {'spread':>6s} {'min':>6s} {'max':>6s}"
        f" {'p50 ms':>6s} {'p99 ms':>6s} {'/cookie':>7s} {'/floor':>6s} {'/redis':>6s} {'/r-lru':>6s}"
        f" {'others':>6s}"
    )
    lines += [header, "-" * len(header)]
    ratios: dict[str, Any] = {}
    for block in BLOCKS:
        endpoint, sync = block
        per = results[block]
        for backend in BACKENDS:
            runs = per[backend]
            rps = [r["rps"] for r in runs]
            cells = []
            for other in RATIO_TO:
                median, low, high = _paired_ratio(runs, per[other])
                ratios[f"{endpoint}/{sync}/{backend}/{other}"] = (median, low, high)
                cells.append(f"{median:{7 if other == 'cookie' else 6}.2f}")
            errors = sum(r["errors"] for r in runs)
            lines.append(
                f"{endpoint:9s} {sync:3s} {backend:12s} {statistics.median(rps):6.0f} {_spread(rps):5.1f}%"
                f" {min(rps):6.0f} {max(rps):6.0f}"
                f" {statistics.median(r['p50_us'] for r in runs) / 1000:6.2f}"
                f" {statistics.median(r['p99_us'] for r in runs) / 1000:6.2f} "
                + " ".join(cells)
                + f" {max(r['foreign_cores'] for r in runs):6.2f}"
                + (f"  ({errors} errors)" if errors else "")
            )
        lines.append("")
    return "\n".join(lines), ratios


def targets(ratios: dict[str, Any], scale: dict[str, Any] | None) -> str:
    rows = [
        ("untouched: pgstore >= 0.98x cookie", "untouched/on/pgstore/cookie", 0.98),
        ("read: pgstore >= 1.3x redis", "read/on/pgstore/redis", 1.3),
        ("read: pgstore >= 1.3x redis-lru", "read/on/pgstore/redis-lru", 1.3),
        ("read: pgstore >= 0.95x floor", "read/on/pgstore/floor", 0.95),
        ("write (sc off): pgstore >= 1.0x redis", "write/off/pgstore/redis", 1.0),
        ("write (sc off): pgstore >= 1.0x redis-lru", "write/off/pgstore/redis-lru", 1.0),
        ("write (sc off): pgstore >= 0.9x floor", "write/off/pgstore/floor", 0.9),
        ("write (sc on): pgstore >= 0.9x floor", "write/on/pgstore/floor", 0.9),
        # The same, with pgstore.prepare_statements = true (off by default).
        ("untouched: pgstore-prep >= 0.98x cookie", "untouched/on/pgstore-prep/cookie", 0.98),
        ("read: pgstore-prep >= 1.3x redis", "read/on/pgstore-prep/redis", 1.3),
        ("read: pgstore-prep >= 1.3x redis-lru", "read/on/pgstore-prep/redis-lru", 1.3),
        ("read: pgstore-prep >= 0.95x floor", "read/on/pgstore-prep/floor", 0.95),
        ("write (sc off): pgstore-prep >= 1.0x redis", "write/off/pgstore-prep/redis", 1.0),
        ("write (sc off): pgstore-prep >= 1.0x redis-lru", "write/off/pgstore-prep/redis-lru", 1.0),
        ("write (sc off): pgstore-prep >= 0.9x floor", "write/off/pgstore-prep/floor", 0.9),
        ("write (sc on): pgstore-prep >= 0.9x floor", "write/on/pgstore-prep/floor", 0.9),
    ]
    lines = []
    for label, key, target in rows:
        median, low, high = ratios[key]
        verdict = "met" if median >= target else f"MISSED by {(target - median) / target * 100:.1f}%"
        lines.append(f"  {label:47s} {median:5.2f}x (reps {low:.2f}-{high:.2f})  {verdict}")
    if scale:
        small, big = f"{scale['small_rows']} rows", f"{scale['big_rows']} rows"
        inproc = scale["in_process"]
        ratio = inproc[big]["median_us"] / inproc[small]["median_us"]
        verdict = "met" if ratio <= 1.2 else f"MISSED by {(ratio - 1.2) / 1.2 * 100:.1f}%"
        label = f"read latency {scale['big_rows']} / {scale['small_rows']} rows <= 1.2"
        lines.append(f"  {label:47s} {ratio:5.2f}x (in-process load, median)  {verdict}")
        http = scale["http"]
        p50 = statistics.median(r["p50_us"] for r in http[big]) / statistics.median(
            r["p50_us"] for r in http[small]
        )
        lines.append(f"  {'  same, HTTP /read p50 through wrk':42s} {p50:5.2f}x")
    return "\n".join(lines)


def micro_report(micro: dict[str, Any]) -> str:
    lines = [f"{'operation':42s} {'median us':>10s} {'p99 us':>9s} {'overhead':>9s}"]
    for section, ops in micro.items():
        if section == "rounds":
            continue
        lines.append(f"{section}:")
        for name, row in ops.items():
            extra = ""
            if MICRO_PAIRS.get(name) in ops:
                extra = f"{row['median_us'] - ops[MICRO_PAIRS[name]]['median_us']:+8.1f}"
            lines.append(f"  {name:40s} {row['median_us']:10.1f} {row['p99_us']:9.1f} {extra:>9s}")
    return "\n".join(lines)


def scale_report(scale: dict[str, Any]) -> str:
    lines = [f"table: {scale['big_rows']} rows is {scale['big_size']} (table + indexes)"]
    lines.append(
        f"{'rows':>10s} {'load median us':>15s} {'load p99 us':>12s}"
        f" {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s}"
    )
    for label, row in scale["in_process"].items():
        runs = scale["http"][label]
        lines.append(
            f"{label.split()[0]:>10s} {row['median_us']:15.1f} {row['p99_us']:12.1f}"
            f" {statistics.median(r['rps'] for r in runs):7.0f}"
            f" {statistics.median(r['p50_us'] for r in runs) / 1000:7.2f}"
            f" {statistics.median(r['p99_us'] for r in runs) / 1000:7.2f}"
        )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------


def library_version() -> str:
    """The commit, and a digest of pyramid_pgstore/ when it differs from it:
    the library may be edited between runs, and figures must say which code ran."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "pyramid_pgstore"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    if not dirty:
        return f"commit {head}"
    digest = hashlib.sha256()
    for path in sorted((REPO / "pyramid_pgstore").rglob("*.py")):
        digest.update(path.read_bytes())
    return f"commit {head} + uncommitted changes (pyramid_pgstore/*.py sha256 {digest.hexdigest()[:12]})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument("--skip", action="append", default=[], choices=("matrix", "micro", "scale"))
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (2 if quick else 5)
    args.duration = args.duration or (1 if quick else 5)
    args.warmup = args.warmup or (1 if quick else 2)
    args.micro_rounds = args.micro_rounds or (500 if quick else 4000)
    args.scale_rows = args.scale_rows or (100_000 if quick else 1_000_000)
    args.max_wait = args.max_wait if args.max_wait is not None else (10 if quick else 120)
    if args.sessions < 1 or args.reps < 1:
        parser.error("--sessions and --reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run bench/setup.sh (apt-get install wrk)")
    # Ctrl-C raises KeyboardInterrupt even if started with SIGINT ignored (as
    # background jobs are); SIGTERM and SIGHUP unwind the same way. Every
    # server is stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    started = time.monotonic()
    library = library_version()  # before the run: the code the servers load
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgstore-bench-")))
        dsn = stack.enter_context(postgres(tmp))
        redis_url = stack.enter_context(redis_server(tmp))
        floor.create_table(dsn)
        facts = pg_facts(dsn)
        env = {
            **os.environ,
            "BENCH_SECRET": secrets.token_urlsafe(48),
            "BENCH_DSN": dsn,
            "BENCH_REDIS_URL": redis_url,
            "BENCH_TIMEOUT": str(TIMEOUT),
            "BENCH_PGSTORE": ";".join(args.pgstore_setting),
        }
        ports: dict[str, int] = {}
        cookie_files: dict[str, Path] = {}
        cookies: dict[str, list[str]] = {}
        for backend in BACKENDS:
            ports[backend] = stack.enter_context(
                app_server(backend, {**env, "BENCH_BACKEND": backend}, tmp, args)
            )
            cookies[backend] = create_sessions(ports[backend], args.sessions)
            check_sessions(backend, ports[backend], cookies[backend])
            cookie_files[backend] = tmp / f"{backend}.cookies"
            cookie_files[backend].write_text("\n".join(cookies[backend]) + "\n")
        log(
            f"{args.sessions} sessions per backend created and checked;"
            f" servers up in {time.monotonic() - started:.0f} s"
        )

        results = None if "matrix" in args.skip else run_matrix(ports, cookie_files, dsn, args)
        micro = None if "micro" in args.skip else run_micro(dsn, redis_url, args)
        scale = None
        if "scale" not in args.skip:
            pg_env = {**env, "BENCH_BACKEND": "pgstore"}
            scale = run_scale(
                dsn, pg_env, ports["pgstore"], cookies["pgstore"], cookie_files["pgstore"], tmp, args
            )

    server = (
        f"gunicorn, {args.workers} sync workers"
        if args.server == "gunicorn"
        else f"waitress, {args.threads} threads"
    )
    print()
    print(
        f"{os.cpu_count()} cores; {server} per backend; wrk -t{args.wrk_threads} -c{args.connections},"
        f" {args.duration:g} s per run, {args.reps} repetitions, backends interleaved;"
        f" {args.sessions} sessions per backend"
    )
    print(
        f"PostgreSQL {facts['server_version']}: synchronous_commit {facts['synchronous_commit']} by default"
        f" (write also run with off), fsync {facts['fsync']}, wal_sync_method {facts['wal_sync_method']},"
        f" shared_buffers {facts['shared_buffers']}; redis: appendonly yes, appendfsync everysec, no RDB"
    )
    print("req/s: median over repetitions; spread = (max - min) / median; p50/p99: wrk latency,")
    print("median over repetitions; /cookie /floor /redis /r-lru: median over repetitions of the req/s ratio")
    print("measured in the same repetition; others: most cores that other processes on the machine")
    print(f"used during any of the row's runs (a run over {args.foreign_limit:g} is run again).")
    print(f"library measured: {library}")
    if args.pgstore_setting:
        print(f"pgstore ran with: {'; '.join(args.pgstore_setting)}")
    if results:
        table, ratios = report(results)
        print()
        print(table)
        print("targets (issue 5):")
        print(targets(ratios, scale))
    if micro:
        print()
        print(f"micro: one process, one connection, {micro['rounds']} rounds, operations interleaved")
        print(micro_report(micro))
    if scale:
        print()
        print("scale: the same sessions read from a small and a big table, interleaved")
        print(scale_report(scale))
    print(f"\ntotal time {time.monotonic() - started:.0f} s, of which {WAITED[0]:.0f} s waiting for quiet")
    if args.json:
        blob = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "postgres": facts,
            "results": {f"{e}/{s}": per for (e, s), per in (results or {}).items()},
            "micro": micro,
            "scale": scale,
        }
        args.json.write_text(json.dumps(blob, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
