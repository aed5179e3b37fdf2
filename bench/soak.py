"""Soak: real gunicorn workers under mixed session traffic, PostgreSQL restarted
or failed over midway.

Starts a throwaway PostgreSQL (as an unprivileged user when root) and
``gunicorn --preload`` with several sync workers serving a small session app
on loopback. Simulated users, each with a cookie jar, log in, count (write),
read and log out for a bounded time; halfway through, PostgreSQL is restarted
(``pg_ctl restart -m fast``), or, with ``--failover sync|async``, the primary
of a primary and streaming replica pair (synchronous or asynchronous) is
killed and the replica promoted a second later (``--promote-after``), the
app on the pair's multi-host DSN. Reports requests served, errors by kind
and whether any fell outside the outage window, the latency tail during the
outage, and acknowledged writes lost: each user's requests are sequential,
so a counter read back lower than the one a 200 acknowledged is a loss.
``--failover-timeout`` is ``pgstore.failover_timeout`` (0: fail at once
instead of waiting for a writable server). ``--lag N``
(async only) stops the standby N seconds before the kill, so that it misses
what the primary acknowledged meanwhile: what an asynchronous failover loses.

``--failover patroni`` runs a real Patroni cluster instead
(``pytest_pgstore.patroni``: etcd and three nodes, ``synchronous_mode:
true``, ``--ttl`` and ``--loop-wait``; ``.ci/need-patroni`` installs etcd and
Patroni) and, ``--seconds`` apart, does three things to it: a planned
``patronictl switchover``; the leader killed (its Patroni and postmaster,
``SIGKILL``), which Patroni replaces once its leader key expires; the
killed node's Patroni started again, which rewinds it and rejoins it as a
standby. Each is reported on its own.

Usage: .venv/bin/python bench/soak.py [--seconds 60] [--users 24] [--workers 3]
       [--failover none|sync|async|patroni] [--promote-after 1] [--failover-timeout 5]
       [--pool-timeout 5] [--lag 0] [--ttl 20] [--loop-wait 2]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.cookiejar
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pyramid.config import Configurator
from pyramid.response import Response
from servers import BENCH, DATABASE, LoadThreads, postgres, wait_for

from pyramid_pgstore import StoreUnavailable
from pytest_pgstore.localdb import free_port
from pytest_pgstore.localpair import ReplicaPair
from pytest_pgstore.patroni import PatroniCluster


def make_app() -> object:
    """The app gunicorn serves (``soak:make_app()``, with ``--pythonpath bench``)."""

    def login(request):
        request.session.invalidate()
        request.session["n"] = 0
        return {"n": 0}

    def incr(request):
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    def read(request):
        return {"n": request.session.get("n")}

    def logout(request):
        request.session.invalidate()
        return {"n": None}

    def unavailable(exc, request):
        return Response(json_body={"error": "unavailable"}, status=503)

    settings = {
        "pgstore.dsn": os.environ["PGSTORE_DSN"],
        "pgstore.secret": "soak-" + "s" * 48,
        "pgstore.pool_max": "4",
        "pgstore.pool_timeout": os.environ.get("SOAK_POOL_TIMEOUT", "2"),
        "pgstore.failover_timeout": os.environ.get("SOAK_FAILOVER_TIMEOUT", "5"),
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        for view in (login, incr, read, logout):
            config.add_route(view.__name__, "/" + view.__name__)
            config.add_view(view, route_name=view.__name__, renderer="json")
        config.add_exception_view(unavailable, StoreUnavailable)
    return config.make_wsgi_app()


class User:
    """One browser session: a cookie jar and the last counter the server acknowledged."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.acked: int | None = None  # None: not logged in

    def call(self, path: str) -> tuple[int | str, dict | None]:
        try:
            with self.opener.open(self.url + path, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, None
        except OSError as error:  # the server itself unreachable: never expected
            return type(error).__name__, None


@contextlib.contextmanager
def gunicorn(dsn: str, args: argparse.Namespace) -> Iterator[str]:
    """``gunicorn --preload`` with ``args.workers`` sync workers serving
    :func:`make_app` on ``dsn``; yields its URL once ``/read`` answers. Its
    warnings go to this terminal; it is terminated on the way out."""
    port = free_port()
    workers = args.workers
    env = {**os.environ, "PGSTORE_DSN": dsn, "PYTHONPATH": str(BENCH.parent)}
    env.update(SOAK_FAILOVER_TIMEOUT=str(args.failover_timeout), SOAK_POOL_TIMEOUT=str(args.pool_timeout))
    argv = [sys.executable, "-m", "gunicorn", "--preload", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    argv += ["--timeout", str(int(max(30, args.failover_timeout + 10)))]
    argv += ["--pythonpath", str(BENCH), "--log-level", "warning", "soak:make_app()"]
    server = subprocess.Popen(argv, env=env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            raise SystemExit("gunicorn did not start")
        urllib.request.urlopen(url + "/read", timeout=2).read()  # noqa: S310 - our own loopback URL
        return True

    try:
        wait_for(up, "gunicorn")
        yield url
    finally:
        server.terminate()
        server.wait(30)


class Crowd(LoadThreads):
    """``count`` simulated users, a thread each, while the ``with`` block runs.

    A user logs in, then counts, reads or logs out at random (5:4:1); one who
    logged out, or whose request got no answer within ``timeout``, is replaced
    by a new visitor. Every request is recorded in ``events`` as (time,
    action, status, seconds).
    """

    join_timeout = 30.0

    def __init__(self, url: str, count: int, timeout: float = 10.0) -> None:
        super().__init__(count)
        self.url = url
        self.timeout = timeout  # a client's, per request: longer than the app may wait
        self.events: list[tuple[float, str, int | str, float]] = []
        self.users: list[User] = []
        self.regressions: list[tuple[float, int]] = []  # (time, writes lost) seen by a user
        self.lock = threading.Lock()

    def _new_user(self) -> User:
        user = User(self.url, self.timeout)
        with self.lock:
            self.users.append(user)
        return user

    def loop(self, seed: int) -> None:
        rng = random.Random(seed)
        user = self._new_user()
        while not self.stop.is_set():
            if user.acked is None:
                action = "login"
            else:
                action = rng.choices(["incr", "read", "logout"], weights=[5, 4, 1])[0]
            started = time.monotonic()
            status, body = user.call("/" + action)
            with self.lock:
                self.events.append((started, action, status, time.monotonic() - started))
            if status == 200:
                # A user's requests are sequential: a counter lower than the
                # one acknowledged (or no session) means writes were lost.
                seen = body["n"] if action != "incr" else body["n"] - 1
                if action in ("read", "incr") and user.acked is not None and (seen or 0) < user.acked:
                    with self.lock:
                        self.regressions.append((started, user.acked - (seen or 0)))
                if action in ("login", "incr"):
                    user.acked = body["n"]
                elif action == "logout":
                    user.acked = None
                    user = self._new_user()  # a new visitor takes its place
            elif not isinstance(status, int):
                # No answer in time: the request may still run, later (a logout,
                # say), so what the session holds is unknown. The user gives up;
                # a new visitor takes their place.
                user.acked = None
                user = self._new_user()

    def check(self) -> tuple[int, int]:
        """Sessions checked and lost: every user logged in must read back at
        least the counter the server last acknowledged."""
        lost = 0
        checked = 0
        for user in self.users:
            if user.acked is None:
                continue
            checked += 1
            status, body = user.call("/read")
            if status != 200 or body["n"] is None or body["n"] < user.acked:
                lost += 1
        return checked, lost


def _percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))]


def report(
    args: argparse.Namespace, crowd: Crowd, events: list[tuple[str, float, float]], checked: int, lost: int
) -> int:
    """Print what was served and what failed, for the whole run and for each
    event (name, start, end); 1 if an acknowledged write was lost (without
    ``--failover async``) or a request failed outside every event's window
    (widened by a second), else 0.

    An event's outage is the longest time no request got a 200 that overlaps
    its window; lost writes are counted where a user saw them (the request
    after), so they are given per event by when they were seen."""
    margin = 1.0
    requests = crowd.events
    served = sum(1 for _, _, status, _ in requests if status == 200)
    print(
        f"\nsoak: {args.seconds:g} s, {args.users} users, gunicorn --preload -w {args.workers},"
        f" pgstore.failover_timeout {args.failover_timeout:g}, pool_timeout {args.pool_timeout:g}"
    )
    total = requests[-1][0] - requests[0][0] if requests else 0.0
    print(f"requests: {len(requests):,} ({len(requests) / max(total, 1e-9):,.0f}/s), 200: {served:,}")
    done = sorted(at + seconds for at, _, status, seconds in requests if status == 200)

    def within(at: float, start: float, end: float) -> bool:
        return start - margin <= at <= end + margin

    for name, start, end in events:
        inside = [
            (action, status, seconds) for at, action, status, seconds in requests if within(at, start, end)
        ]
        by_kind = collections.Counter(
            f"{action} -> {status}" for action, status, _ in inside if status != 200
        )
        gaps = [b - a for a, b in itertools.pairwise(done) if b > start and a < end]
        latencies = sorted(seconds for _, _, seconds in inside)
        regressions = [count for at, count in crowd.regressions if within(at, start, end + args.seconds / 2)]
        print(f"{name} took {end - start:.2f} s")
        print(
            f"  requests in the window (+-{margin:g} s): {len(inside):,}; errors: {dict(by_kind) or 'none'}"
        )
        if latencies:
            p50, p99 = (_percentile(latencies, fraction) * 1000 for fraction in (0.5, 0.99))
            print(
                f"  no 200 for {max(gaps, default=0.0):.2f} s; latency p50 {p50:.0f} ms, p99 {p99:.0f} ms,"
                f" max {latencies[-1] * 1000:.0f} ms"
            )
        print(f"  acknowledged writes lost, seen after it: {sum(regressions)}, by {len(regressions)} users")
    outside = collections.Counter(
        f"{action} -> {status}"
        for at, action, status, _ in requests
        if status != 200 and not any(within(at, start, end) for _, start, end in events)
    )
    print(f"errors outside the windows: {dict(outside) or 'none'}")
    regressed = len(crowd.regressions)
    writes = sum(count for _, count in crowd.regressions)
    print(
        f"acknowledged writes lost: {writes}, seen by {regressed} users on their next request"
        f"; at the end, of {checked} sessions checked, {lost} behind"
    )
    return 1 if ((lost or regressed) and args.failover != "async") or outside else 0


def patroni_events(cluster: PatroniCluster, pause: float) -> list[tuple[str, float, float]]:
    """A switchover, the leader killed and its rejoin, ``pause`` seconds apart;
    each as (name, start, end): the end is when a leader takes writes again
    (the rejoin's: when every member streams)."""
    events = []
    started = time.monotonic()
    new = cluster.switchover()
    events.append((f"patronictl switchover (to {new})", started, time.monotonic()))
    cluster.wait_until_healthy()
    time.sleep(pause)
    started = time.monotonic()
    killed = cluster.kill_leader()
    new = cluster.wait_for_failover(killed)
    events.append((f"leader {killed} killed (SIGKILL), {new} promoted", started, time.monotonic()))
    time.sleep(pause)
    started = time.monotonic()
    cluster.rejoin(killed)
    events.append((f"{killed} rejoined ({_rejoined_with(cluster, killed)})", started, time.monotonic()))
    return events


def _rejoined_with(cluster: PatroniCluster, name: str) -> str:
    """How Patroni brought ``name`` back, from its log."""
    log = cluster.member(name).logfile.read_text(errors="replace")
    return "pg_rewind" if "pg_rewind exit code=0" in log else "no rewind"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=60, help="patroni: before, between and after the events"
    )
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--failover", choices=("none", "sync", "async", "patroni"), default="none")
    parser.add_argument("--promote-after", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--failover-timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--pool-timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--lag", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--ttl", type=int, default=20, help="Patroni's ttl (--failover patroni)")
    parser.add_argument("--loop-wait", type=int, default=2, help="Patroni's loop_wait (--failover patroni)")
    args = parser.parse_args()
    if args.lag and args.failover != "async":
        parser.error("--lag needs --failover async (a synchronous standby cannot fall behind)")

    timeout = max(60.0, args.failover_timeout + 30)  # a client (a proxy) waits longer than the app
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.failover == "patroni":
            retry_timeout = min(10, (args.ttl - args.loop_wait) // 2)
            cluster = PatroniCluster(
                Path(tmp),
                ttl=args.ttl,
                loop_wait=args.loop_wait,
                retry_timeout=retry_timeout,
                dbname=DATABASE,
            )
            stack.callback(cluster.stop)
            cluster.start()
            url = stack.enter_context(gunicorn(cluster.dsn, args))
            with Crowd(url, args.users, timeout) as crowd:
                time.sleep(args.seconds)
                events = patroni_events(cluster, args.seconds)
                time.sleep(args.seconds)
            checked, lost = crowd.check()
            print(f"\nPatroni: ttl {args.ttl}, loop_wait {args.loop_wait}, retry_timeout {retry_timeout}")
            return report(args, crowd, events, checked, lost)
        if args.failover == "none":
            server = stack.enter_context(postgres(Path(tmp) / "pg"))
            dsn, pair = server.dsn(DATABASE), None
        else:
            pair = ReplicaPair(Path(tmp), synchronous=args.failover == "sync", dbname=DATABASE)
            stack.callback(pair.stop)
            pair.start()
            dsn = pair.dsn
        url = stack.enter_context(gunicorn(dsn, args))
        started = time.monotonic()
        with Crowd(url, args.users, timeout) as crowd:
            time.sleep(args.seconds / 2 - args.lag)
            if args.lag:
                pair.replica.stop()  # it falls behind: the primary's writes go on, unreplicated
                time.sleep(args.lag)
            outage_start = time.monotonic()
            if pair is None:
                server.restart("fast")
            else:
                pair.kill_primary()
                if args.lag:
                    pair.replica.start()
                time.sleep(args.promote_after)  # a failover tool deciding
                pair.promote()
            outage_end = time.monotonic()
            time.sleep(max(0.0, started + args.seconds - time.monotonic()))
        checked, lost = crowd.check()
    if pair is None:
        what = "restart (pg_ctl restart -m fast)"
    else:
        what = f"failover ({args.failover} standby: kill, promote {args.promote_after:g} s later)"
        if args.lag:
            what += f", the standby stopped {args.lag:g} s before the kill"
    return report(args, crowd, [(what, outage_start, outage_end)], checked, lost)


if __name__ == "__main__":
    sys.exit(main())
