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

Usage: .venv/bin/python bench/soak.py [--seconds 60] [--users 24] [--workers 3]
       [--failover none|sync|async] [--promote-after 1] [--failover-timeout 5]
       [--pool-timeout 5] [--lag 0]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.cookiejar
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

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.acked: int | None = None  # None: not logged in

    def call(self, path: str) -> tuple[int | str, dict | None]:
        try:
            with self.opener.open(self.url + path, timeout=10) as response:
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
    logged out is replaced by a new visitor. Every request is recorded in
    ``events`` as (time, action, status).
    """

    join_timeout = 30.0

    def __init__(self, url: str, count: int) -> None:
        super().__init__(count)
        self.url = url
        self.events: list[tuple[float, str, int | str, float]] = []
        self.users: list[User] = []
        self.regressions: list[tuple[float, int]] = []  # (time, writes lost) seen by a user
        self.lock = threading.Lock()

    def _new_user(self) -> User:
        user = User(self.url)
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


def report(
    args: argparse.Namespace, crowd: Crowd, outage: tuple[float, float], checked: int, lost: int
) -> int:
    """Print what was served and what failed; 1 if an acknowledged write was
    lost (without ``--failover async``) or a request failed outside the outage
    window (widened by a second), else 0."""
    events = crowd.events
    outage_start, outage_end = outage
    margin = 1.0
    by_kind: collections.Counter = collections.Counter()
    outside = collections.Counter()
    during = []  # latencies of requests started in the outage window
    for at, action, status, seconds in events:
        if outage_start - margin <= at <= outage_end + margin:
            during.append(seconds)
        if status != 200:
            by_kind[f"{action} -> {status}"] += 1
            if not outage_start - margin <= at <= outage_end + margin:
                outside[f"{action} -> {status}"] += 1
    served = sum(1 for _, _, status, _ in events if status == 200)
    what = (
        "restart (pg_ctl restart -m fast)"
        if args.failover == "none"
        else (f"failover ({args.failover} standby: kill, promote {args.promote_after:g} s later)")
    )
    if args.lag:
        what += f", the standby stopped {args.lag:g} s before the kill"
    print(
        f"\nsoak: {args.seconds:g} s, {args.users} users, gunicorn --preload -w {args.workers},"
        f" pgstore.failover_timeout {args.failover_timeout:g}, pool_timeout {args.pool_timeout:g}"
    )
    print(f"requests: {len(events):,} ({len(events) / args.seconds:,.0f}/s), 200: {served:,}")
    print(f"{what} took {outage_end - outage_start:.2f} s")
    print(f"errors by kind: {dict(by_kind) or 'none'}")
    print(f"errors outside the outage window (+-{margin:g} s): {dict(outside) or 'none'}")
    if during:
        during.sort()
        p50 = during[len(during) // 2]
        p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
        print(
            f"latency of the {len(during)} requests in the window: p50 {p50 * 1000:.0f} ms,"
            f" p99 {p99 * 1000:.0f} ms, max {during[-1] * 1000:.0f} ms"
        )
    regressed = len(crowd.regressions)
    writes = sum(count for _, count in crowd.regressions)
    print(
        f"acknowledged writes lost: {writes}, seen by {regressed} users on their next request"
        f"; at the end, of {checked} sessions checked, {lost} behind"
    )
    return 1 if ((lost or regressed) and args.failover != "async") or outside else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--failover", choices=("none", "sync", "async"), default="none")
    parser.add_argument("--promote-after", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--failover-timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--pool-timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--lag", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()
    if args.lag and args.failover != "async":
        parser.error("--lag needs --failover async (a synchronous standby cannot fall behind)")

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
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
        with Crowd(url, args.users) as crowd:
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
    return report(args, crowd, (outage_start, outage_end), checked, lost)


if __name__ == "__main__":
    sys.exit(main())
