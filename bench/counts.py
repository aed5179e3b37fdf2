"""Instructions per request, counted by callgrind: a measure the machine's noise cannot move (issue 24).

wrk's req/s on this shared 2-core machine move by up to ±8 % from run to
run; a change worth a few percent needs a measure that does not. Valgrind's
callgrind counts the instructions a process executes, which for the same
binary and the same inputs is the same whatever else the machine does. Two
counts per request, for each backend and endpoint:

``app``
    the Python process: ``N`` whole WSGI requests (the environ built, the
    app called, its body read and closed), in process, no HTTP server. The
    process runs under ``valgrind --tool=callgrind`` with
    ``--zero-before=os_getppid --dump-before=os_getpgrp``: the measured loop
    is bracketed by ``os.getppid()`` and ``os.getpgrp()``, which nothing else
    calls, so the counts hold that loop and nothing else (not the imports,
    the app's construction, the session creation or the warm-up). Only the
    main thread is counted (``--separate-threads=yes``): pgstore's watchdog
    thread wakes on a wall-clock timer. Left out: the instructions glibc's
    ``realloc`` spends copying a block it cannot grow in place. Whether it
    can depends on what lies next to the block in the heap, which any
    allocation anywhere in the process changes: webob's cookie regex grows
    its stack that way on every request, and those copies came to 5-60k
    instructions a read, moving by 10k and more with unrelated code
    (``realloc_copies`` in the JSON keeps them).
``pg``
    the PostgreSQL backend process serving that app's connection. A
    throwaway server runs under callgrind as a whole (the backends are forks
    of the postmaster, so each has counts of its own) with
    ``--zero-before=pg_backend_pid --dump-before=pg_postmaster_start_time``:
    around the loop the child sends ``SELECT pg_backend_pid()`` and ``SELECT
    pg_postmaster_start_time()`` on each of the app's connections (found by
    the garbage collector, idle in their pool at that moment), and the
    dump holds what that backend did in between. The two marker statements'
    own share is measured the same way with no request between them, and
    taken off.

Each backend runs in a child process of its own (``python counts.py --child``):
it builds the app (``bench/apps.py``, the same as the HTTP bench, the
baseline's library on ``PYTHONPATH``), creates ``--sessions`` sessions through
``/write``, warms up with ``--warmup`` requests per endpoint, then measures
``untouched``, ``read`` and ``write``, ``--requests`` each, request ``i``
carrying session ``i % sessions``, after a full collection (so that no
collection of the oldest generation, which a loop may or may not trigger,
depends on what ran before). ``PYTHONHASHSEED=0`` in the children. The
server runs with ``fsync`` and ``synchronous_commit`` on, as the HTTP bench;
``autovacuum`` off and ``checkpoint_timeout`` one hour, so that no other
process changes the pages between two runs (after a checkpoint, the next
write of each page logs a full-page image).

Every figure is counted ``--runs`` times (whole runs, each on a fresh
server) and the largest difference between runs is printed: under 0.1 %
here. A change to the library or the harness moves the other backends'
counts by up to about 0.4 % (the heap's layout still shows through in
``malloc``). ``--top N`` lists the functions (of the interpreter, of
PostgreSQL: Debian strips its static functions, counted under the exported
function before them) whose own instructions differ most between pgstore and
floor; ``--keep DIR`` keeps the callgrind files.

Usage: .venv/bin/python bench/counts.py [--requests N] [--baseline REF] [--backends lean,floor,pgstore]
Needs valgrind (``bench/setup.sh`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ENDPOINTS = ("untouched", "read", "write")
BACKENDS = ("lean", "floor", "pgstore")
BASELINE = "pgstore-base"
# The marker functions: the Python loop between the first and the second,
# the PostgreSQL backend's work between the first and the second statement.
APP_MARKS = ("os_getppid", "os_getpgrp")
PG_MARKS = ("pg_backend_pid", "pg_postmaster_start_time")
PG_ZERO_SQL = "SELECT pg_backend_pid()"
PG_DUMP_SQL = "SELECT pg_postmaster_start_time()"
CALLGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--compress-strings=no", "--compress-pos=no"]

# Counts[backend][endpoint] = {"app": instructions per request, "pg": ...}
Counts = dict[str, dict[str, dict[str, float]]]


# -- the child: one backend's app, measured -------------------------------------


def _connections() -> list[Any]:
    """Every open psycopg2 connection of this process."""
    import psycopg2.extensions

    return [o for o in gc.get_objects() if isinstance(o, psycopg2.extensions.connection) and not o.closed]


def _mark(conns: list[Any], sql: str) -> list[int]:
    """Send a marker statement on each connection; the backends' pids."""
    pids = []
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.fetchone()
        pids.append(conn.get_backend_pid())
    return pids


def child(args: argparse.Namespace) -> None:
    """Runs under callgrind: build the app, make sessions, warm up, measure
    each endpoint between the markers; print what it measured as JSON."""
    import apps
    import psycopg2
    from webob import Request

    app = apps.make_app()

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return None

    def call(base: dict[str, Any], cookie: str | None) -> None:
        environ = dict(base)
        if cookie is not None:
            environ["HTTP_COOKIE"] = cookie
        body = app(environ, start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    environs = {e: Request.blank("/" + e).environ for e in ENDPOINTS}
    cookies = []
    for _ in range(args.sessions):
        response = Request.blank("/write").get_response(app)
        cookies.append(response.headers["Set-Cookie"].split(";", 1)[0])
    for endpoint in ENDPOINTS:
        for i in range(args.warmup):
            call(environs[endpoint], cookies[i % args.sessions])

    # The marker statements' own share of a backend's window: the two in a
    # row, twice (the second time, as in the windows, on a backend that has
    # run both before).
    own = psycopg2.connect(os.environ["BENCH_DSN"])
    own.autocommit = True
    for _ in range(2):
        calibration = {"pid": _mark([own], PG_ZERO_SQL)[0]}
        _mark([own], PG_DUMP_SQL)
    own.close()

    windows = []
    for endpoint in ENDPOINTS:
        conns = _connections()
        if not windows:  # a first pair, as on the calibration connection
            _mark(conns, PG_ZERO_SQL)
            _mark(conns, PG_DUMP_SQL)
        # Every window starts with the collector's generations empty: a
        # collection of the oldest one, which the request loop may or may not
        # trigger, would otherwise come and go with the allocations before.
        gc.collect()
        pids = _mark(conns, PG_ZERO_SQL)
        base, n, sessions = environs[endpoint], args.requests, args.sessions
        os.getppid()  # zero
        for i in range(n):
            call(base, cookies[i % sessions])
        os.getpgrp()  # dump
        if len(_connections()) != len(conns):
            raise RuntimeError(f"{endpoint}: the app opened a connection during the measured loop")
        _mark(conns, PG_DUMP_SQL)
        windows.append({"endpoint": endpoint, "backend_pids": pids})
    print("COUNTS " + json.dumps({"calibration": calibration, "windows": windows}), flush=True)


# -- the server under callgrind --------------------------------------------------


def _under_callgrind(base: Path) -> Any:
    """A LocalPostgres whose ``pg_ctl start`` starts the server under callgrind."""
    from pytest_pgstore.localdb import LocalPostgres

    class CountedPostgres(LocalPostgres):
        wrapper = base / "postgres-under-callgrind"

        def run(self, program: str, *args: str, check: bool = True, timeout: float = 120) -> str:
            if program == "pg_ctl" and args[:1] == ("start",):
                # Under valgrind the server takes a while to come up.
                args, timeout = (*args, "-p", str(self.wrapper), "-t", "600"), 660
            return super().run(program, *args, check=check, timeout=timeout)

    return CountedPostgres


@contextlib.contextmanager
def counted_postgres(base: Path) -> Iterator[tuple[Any, str, Path]]:
    """A throwaway PostgreSQL whose every process runs under callgrind,
    writing ``base/callgrind/pg.<pid>.<dump>``; yields the server, the DSN
    of its database and that directory."""
    from servers import DATABASE

    settings = {"fsync": "on", "autovacuum": "off", "checkpoint_timeout": "1h", "max_wal_size": "4GB"}
    server = _under_callgrind(base)(base, settings=settings, log=_quiet)
    server.init()
    out = base / "callgrind"
    out.mkdir()
    marks = [f"--zero-before={PG_MARKS[0]}", f"--dump-before={PG_MARKS[1]}"]
    real = Path(server.bindir) / "postgres"
    command = [*CALLGRIND, f"--callgrind-out-file={out}/pg.%p", *marks, str(real)]
    server.wrapper.write_text("#!/bin/sh\nexec " + " ".join(command) + ' "$@"\n')
    server.wrapper.chmod(0o755)
    if server.run_as is not None:
        import pwd

        account = pwd.getpwnam(server.run_as)
        os.chown(out, account.pw_uid, account.pw_gid)
    try:
        server.start()
        server.create_database(DATABASE)
        yield server, server.dsn(DATABASE), out
    finally:
        server.stop("fast")


def _quiet(message: str) -> None:
    pass


# -- reading callgrind's files ---------------------------------------------------

_TOTALS = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


def instructions(path: Path) -> int:
    """The Ir total of one callgrind dump."""
    found = _TOTALS.search(path.read_bytes())
    if found is None:
        raise RuntimeError(f"no totals in {path}")
    return int(found.group(1))


@dataclass
class Dump:
    """One callgrind dump: its total, each function's own instructions (not
    those of what it calls, as ``function [object file]``) and each call
    arc's inclusive instructions, ``(caller, callee)``."""

    total: int
    own: dict[str, int]
    calls: dict[tuple[str, str], int]

    @property
    def realloc_copies(self) -> int:
        """Instructions glibc's realloc spent copying blocks it could not grow
        in place: whether it can depends on what lies next to the block in
        the heap, which any allocation anywhere in the process changes."""
        return sum(
            cost
            for (caller, callee), cost in self.calls.items()
            if caller.startswith("_int_realloc ") and callee.startswith("__mem")
        )


def read_dump(path: Path) -> Dump:
    """Parse one callgrind dump (``--compress-strings`` either way).

    (``callgrind_annotate`` misreads a dump that starts mid-run: it gives the
    whole part to the function that was running when the counts were zeroed.)
    """
    total = instructions(path)
    own: dict[str, int] = {}
    calls: dict[tuple[str, str], int] = {}
    names: dict[str, dict[str, str]] = {"fn": {}, "ob": {}}
    function = callee = obj = callee_obj = ""
    after_call = False
    for line in path.read_text(errors="replace").splitlines():
        kind, _, value = line.partition("=")
        if kind in ("fn", "cfn", "ob", "cob"):
            table = names[kind.removeprefix("c")]
            ref, _, name = value.partition(") ")
            if value.startswith("(") and name:
                table[ref] = name
            resolved = table.get(ref, name) if value.startswith("(") else value
            if kind == "ob":
                obj = callee_obj = resolved.rsplit("/", 1)[-1]
            elif kind == "cob":
                callee_obj = resolved.rsplit("/", 1)[-1]
            elif kind == "fn":
                function, callee_obj = f"{resolved} [{obj}]", obj
            else:
                callee = f"{resolved} [{callee_obj}]"
        elif kind == "calls":
            after_call = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if len(fields) < 2:
                continue
            if after_call:
                after_call = False
                calls[(function, callee)] = calls.get((function, callee), 0) + int(fields[1])
            else:
                own[function] = own.get(function, 0) + int(fields[1])
    return Dump(total, own, calls)


def dump_file(directory: Path, prefix: str, pid: int, number: int, thread: int | None = None) -> Path:
    """Callgrind's name for dump ``number`` of process ``pid`` (of one thread)."""
    name = f"{prefix}.{pid}.{number}" + (f"-{thread:02d}" if thread is not None else "")
    path = directory / name
    if not path.exists():
        raise RuntimeError(f"callgrind wrote no {path}")
    return path


def run_child(
    backend: str, env: dict[str, str], pg_out: Path, work: Path, code: Path, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """One backend's child under callgrind (the bench's scripts from ``code``);
    its instructions per request."""
    out = work / backend
    out.mkdir(parents=True)
    marks = [f"--zero-before={APP_MARKS[0]}", f"--dump-before={APP_MARKS[1]}"]
    argv = [*CALLGRIND, "--separate-threads=yes", f"--callgrind-out-file={out}/app.%p", *marks]
    argv += [sys.executable, str(code / "bench" / "counts.py"), "--child"]
    argv += ["--requests", str(args.requests), "--warmup", str(args.warmup), "--sessions", str(args.sessions)]
    child_env = {**env, "BENCH_BACKEND": backend, "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=3600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("COUNTS ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{backend}: the counted child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(lines[-1][len("COUNTS ") :])
    app_pid = _single_pid(out, "app")
    _wait_for_dumps(pg_out, report)
    # The markers' own share: the second dump of the calibration connection's backend.
    overhead = instructions(dump_file(pg_out, "pg", report["calibration"]["pid"], 2))
    n = args.requests
    counts: dict[str, dict[str, float]] = {}
    seen: dict[int, int] = {pid: 1 for pid in report["windows"][0]["backend_pids"]}  # the first pair's
    for number, window in enumerate(report["windows"], start=1):
        app_dump = dump_file(out, "app", app_pid, number, thread=1)
        pg_dumps = []
        for pid in window["backend_pids"]:
            seen[pid] = seen.get(pid, 0) + 1
            pg_dumps.append(dump_file(pg_out, "pg", pid, seen[pid]))
        pg = sum(instructions(path) - overhead for path in pg_dumps)
        app = read_dump(app_dump)
        counts[window["endpoint"]] = {
            "app": (app.total - app.realloc_copies) / n,
            "pg": pg / n,
            "realloc_copies": app.realloc_copies / n,
        }
        if args.top:
            functions = {"app": _per_request(app.own, n), "pg": {}}
            for path in pg_dumps:
                for name, cost in _per_request(read_dump(path).own, n).items():
                    functions["pg"][name] = functions["pg"].get(name, 0) + cost
            counts[window["endpoint"]]["functions"] = functions  # type: ignore[assignment]
    if args.keep:
        target = args.keep / backend
        shutil.copytree(out, target, dirs_exist_ok=True)
        for window in report["windows"]:
            for pid in window["backend_pids"]:
                for path in pg_out.glob(f"pg.{pid}.*"):
                    shutil.copy(path, target / path.name)
    shutil.rmtree(out)
    return counts


def _per_request(costs: dict[str, int], n: int) -> dict[str, float]:
    return {name: cost / n for name, cost in costs.items()}


def _single_pid(directory: Path, prefix: str) -> int:
    pids = {int(re.match(r"[a-z]+\.(\d+)", p.name).group(1)) for p in directory.glob(f"{prefix}.*")}  # type: ignore[union-attr]
    if len(pids) != 1:
        raise RuntimeError(f"expected the dumps of one process in {directory}, found {sorted(pids)}")
    return pids.pop()


def _wait_for_dumps(pg_out: Path, report: dict[str, Any]) -> None:
    """A backend writes its dump when it enters the marker function, before
    it answers; still, give the file system a moment on a busy machine."""
    wanted = [(report["calibration"]["pid"], 2)]
    counts: dict[int, int] = {pid: 1 for pid in report["windows"][0]["backend_pids"]}
    for window in report["windows"]:
        for pid in window["backend_pids"]:
            counts[pid] = counts.get(pid, 0) + 1
            wanted.append((pid, counts[pid]))
    deadline = time.monotonic() + 30
    while not all((pg_out / f"pg.{pid}.{n}").exists() for pid, n in wanted):
        if time.monotonic() > deadline:
            return  # dump_file names the missing one
        time.sleep(0.2)


# -- the whole measure ------------------------------------------------------------


def measure(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """``args.runs`` whole runs; per backend, endpoint and side the count of
    the first run and the largest relative difference between runs.

    The library and the bench's scripts are copied first, and every run
    uses the copies: editing the checkout meanwhile changes nothing.
    """
    import report as bench_report

    names = [*args.backends] + ([BASELINE] if args.baseline else [])
    runs: list[Counts] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pgstore-counts-code-") as code_name:
        code = Path(code_name)
        skip = shutil.ignore_patterns("results", "__pycache__")
        shutil.copytree(BENCH, code / "current" / "bench", ignore=skip)
        shutil.copytree(BENCH.parent / "pyramid_pgstore", code / "current" / "pyramid_pgstore", ignore=skip)
        if args.baseline:
            bench_report.export_package(args.baseline, code / "baseline")
        for run in range(1, args.runs + 1):
            prefix = f"counts run {run}/{args.runs}"
            runs.append(_one_run(names, code, args, lambda line, prefix=prefix: say(f"{prefix} {line}")))
    return {
        "requests": args.requests,
        "warmup": args.warmup,
        "sessions": args.sessions,
        "runs": args.runs,
        "seconds": time.monotonic() - started,
        "baseline": args.baseline,
        "counts": runs[0],
        "all_runs": runs,
        "difference": _difference(runs),
    }


def _one_run(names: list[str], code: Path, args: argparse.Namespace, say: Any) -> Counts:
    """Every backend in ``names``, one after the other, on one fresh server."""
    import floor
    import lean

    with tempfile.TemporaryDirectory(prefix="pgstore-counts-", ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        with counted_postgres(tmp / "pg") as (_server, dsn, pg_out):
            floor.create_table(dsn)
            lean.create_table(dsn)
            env = {**os.environ, "BENCH_SECRET": secrets.token_urlsafe(48), "BENCH_DSN": dsn}
            env["BENCH_TIMEOUT"] = "86400"
            counts: Counts = {}
            for name in names:
                library = code / ("baseline" if name == BASELINE else "current")
                env["PYTHONPATH"] = str(library)
                counts[name] = run_child(name, env, pg_out, tmp / "app", code / "current", args)
                say(f"{name:12s} " + _brief(counts[name]))
            return counts


def _brief(counts: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{e} {c['app'] / 1000:.0f}k+{c['pg'] / 1000:.0f}k" for e, c in counts.items())


def _difference(runs: list[Counts]) -> float:
    """The largest relative difference between two runs' counts, in percent."""
    worst = 0.0
    first = runs[0]
    for other in runs[1:]:
        for backend, per in first.items():
            for endpoint, sides in per.items():
                for side in ("app", "pg"):
                    value = sides[side]
                    if value > 1000:  # a backend's untouched "pg" is 0 give or take the markers
                        worst = max(worst, abs(other[backend][endpoint][side] - value) / value * 100)
    return worst


def table(result: dict[str, Any], compare: tuple[str, ...] = ("floor", "lean", BASELINE)) -> str:
    """Instructions per request (thousands) and pgstore's over each reference's."""
    counts: Counts = result["counts"]
    lines = [
        f"instructions per request (callgrind, thousands; bench/counts.py): {result['requests']} requests"
        f" per endpoint after {result['warmup']} of warm-up, over {result['sessions']} sessions;",
        "app = the WSGI process (main thread; realloc's copies left out), pg = its PostgreSQL backend;",
        f"{result['runs']} runs, largest difference between them {result['difference']:.2f} %",
    ]
    header = f"{'backend':13s}" + "".join(
        f" {e + ' app':>13s} {e + ' pg':>10s} {e + ' sum':>10s}" for e in ENDPOINTS
    )
    lines += [header, "-" * len(header)]
    for backend, per in counts.items():
        cells = ""
        for endpoint in ENDPOINTS:
            c = per[endpoint]
            cells += f" {c['app'] / 1000:13.1f} {c['pg'] / 1000:10.1f} {(c['app'] + c['pg']) / 1000:10.1f}"
        lines.append(f"{backend:13s}{cells}")
    lines.append("")
    lines.append("pgstore's count over the other's (lower is cheaper):")
    for other in compare:
        if other not in counts or "pgstore" not in counts:
            continue
        cells = ""
        for endpoint in ENDPOINTS:
            mine, theirs = counts["pgstore"][endpoint], counts[other][endpoint]
            cells += f" {_ratio(mine['app'], theirs['app']):>13s} {_ratio(mine['pg'], theirs['pg']):>10s}"
            cells += f" {_ratio(mine['app'] + mine['pg'], theirs['app'] + theirs['pg']):>10s}"
        lines.append(f"{'/' + other:13s}{cells}")
    return "\n".join(lines)


def top_table(result: dict[str, Any], top: int, against: str = "floor") -> str:
    """Per endpoint and side, the ``top`` functions whose own instructions per
    request differ most between pgstore and ``against`` (with ``--top``)."""
    counts: Counts = result["counts"]
    lines = []
    for endpoint in ENDPOINTS:
        for side in ("app", "pg"):
            mine = counts["pgstore"][endpoint]["functions"][side]  # type: ignore[index]
            theirs = counts[against][endpoint]["functions"][side]  # type: ignore[index]
            names = sorted(set(mine) | set(theirs), key=lambda f: -abs(mine.get(f, 0) - theirs.get(f, 0)))
            lines.append(
                f"{endpoint} {side}: own instructions per request, pgstore - {against} (pgstore, {against})"
            )
            for name in names[:top]:
                a, b = mine.get(name, 0), theirs.get(name, 0)
                lines.append(f"  {a - b:+10.0f} {a:10.0f} {b:10.0f}  {name[:100]}")
    return "\n".join(lines)


def _ratio(mine: float, theirs: float) -> str:
    return "-" if theirs < 1000 else f"{mine / theirs:.3f}"


def options(bench: argparse.Namespace) -> argparse.Namespace:
    """This measure's options for a ``bench/run.py`` run (its ``--counts-*``
    options and its ``--baseline``)."""
    return argparse.Namespace(
        requests=bench.counts_requests,
        warmup=max(10, bench.counts_requests // 5),
        sessions=bench.counts_requests,
        runs=bench.counts_runs,
        backends=list(BACKENDS),
        baseline=bench.baseline,
        keep=None,
        top=0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100, help="measured requests per endpoint (100)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per endpoint (20)")
    parser.add_argument("--sessions", type=int, default=100, help="sessions per backend (100)")
    parser.add_argument("--runs", type=int, default=2, help="whole runs, to show the counts repeat (2)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (lean,floor,pgstore)")
    parser.add_argument("--baseline", metavar="REF", help="also count pyramid_pgstore at this git ref")
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    parser.add_argument(
        "--top", type=int, default=0, help="also list the N functions that differ most, pgstore - floor"
    )
    parser.add_argument("--json", type=Path, help="also write the counts to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: run bench/setup.sh (apt-get install valgrind)")
    from servers import log

    args.backends = [b for b in args.backends.split(",") if b]
    result = measure(args, log)
    print(table(result))
    if args.top:
        print()
        print(top_table(result, args.top))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
