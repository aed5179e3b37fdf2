"""Soak: real gunicorn workers under mixed session traffic, PostgreSQL restarted midway.

Starts a throwaway PostgreSQL (as an unprivileged user when root) and
``gunicorn --preload`` with several sync workers serving a small session app
on loopback. Simulated users, each with a cookie jar, log in, count (write),
read and log out for a bounded time; halfway through, PostgreSQL is restarted
(``pg_ctl restart -m fast``). Reports requests served, errors by kind and
whether any fell outside the outage window, and sessions lost: every write
acknowledged with a 200 must read back afterwards (must be 0).

Usage: .venv/bin/python bench/soak.py [--seconds 60] [--users 24] [--workers 3]
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
from pyramid_pgstore.localdb import free_port


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
        "pgstore.pool_timeout": "2",
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
def gunicorn(dsn: str, workers: int) -> Iterator[str]:
    """``gunicorn --preload`` with ``workers`` sync workers serving
    :func:`make_app` on ``dsn``; yields its URL once ``/read`` answers. Its
    warnings go to this terminal; it is terminated on the way out."""
    port = free_port()
    env = {**os.environ, "PGSTORE_DSN": dsn, "PYTHONPATH": str(BENCH.parent)}
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
        self.events: list[tuple[float, str, int | str]] = []
        self.users: list[User] = []
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
            status, body = user.call("/" + action)
            with self.lock:
                self.events.append((time.monotonic(), action, status))
            if status == 200:
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
    args: argparse.Namespace, events: list, outage: tuple[float, float], checked: int, lost: int
) -> int:
    """Print what was served and what failed; 1 if a session was lost or a
    request failed outside the outage window (widened by a second), else 0."""
    outage_start, outage_end = outage
    margin = 1.0
    by_kind: collections.Counter = collections.Counter()
    outside = collections.Counter()
    for at, action, status in events:
        if status != 200:
            by_kind[f"{action} -> {status}"] += 1
            if not outage_start - margin <= at <= outage_end + margin:
                outside[f"{action} -> {status}"] += 1
    served = sum(1 for _, _, status in events if status == 200)
    print(f"\nsoak: {args.seconds:g} s, {args.users} users, gunicorn --preload -w {args.workers}")
    print(f"requests: {len(events):,} ({len(events) / args.seconds:,.0f}/s), 200: {served:,}")
    print(f"restart (pg_ctl restart -m fast) took {outage_end - outage_start:.2f} s")
    print(f"errors by kind: {dict(by_kind) or 'none'}")
    print(f"errors outside the outage window (+-{margin:g} s): {dict(outside) or 'none'}")
    print(f"sessions checked: {checked}, lost: {lost}")
    return 1 if lost or outside else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres(Path(tmp) / "pg") as server,
        gunicorn(server.dsn(DATABASE), args.workers) as url,
    ):
        started = time.monotonic()
        with Crowd(url, args.users) as crowd:
            time.sleep(args.seconds / 2)
            outage_start = time.monotonic()
            server.restart("fast")
            outage_end = time.monotonic()
            time.sleep(max(0.0, started + args.seconds - time.monotonic()))
        checked, lost = crowd.check()
    return report(args, crowd.events, (outage_start, outage_end), checked, lost)


if __name__ == "__main__":
    sys.exit(main())
