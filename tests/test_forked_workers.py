"""``gunicorn --preload``: workers forked from a process that has already run
``config.include('pyramid_pgstore')``, on the app's SQLAlchemy engine.

A connection left open in the engine's pool before the fork would be one
socket shared by every worker: their statements interleave on it and
requests fail (``server closed the connection unexpectedly``, ``no results
to fetch``), a few in every few hundred. The app is docs/sqlalchemy.rst's
SQLAlchemy setup (tests/forked_app.py) served by a real gunicorn.
"""

import collections
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from db import sql

TESTS = Path(__file__).resolve().parent
CLIENTS = 8
ROUNDS = 40  # per client: a note (a write) and a read each; with the login, 8 * 81 = 648 requests


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """``gunicorn --preload -w 2 --paste app.ini`` on loopback; its log in a file."""

    def __init__(self, ini, log):
        self.address = ("127.0.0.1", free_port())
        self.url = "http://{}:{}".format(*self.address)
        argv = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-k", "sync"]
        argv += ["-b", self.url.removeprefix("http://"), "--paste", str(ini), "--log-level", "warning"]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        }
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        # Listening means the app is loaded: --preload loads it before binding.
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn did not start:\n{log.read_text()}")
            try:
                socket.create_connection(self.address, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"gunicorn did not listen in 60 s:\n{log.read_text()}")
                time.sleep(0.1)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Client:
    """One browser, its own cookie jar: logs in, then writes and reads in turn,
    checking that each read gives back what the last write acknowledged."""

    def __init__(self, url, name):
        self.url = url
        self.name = name
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.requests = 0
        self.errors = collections.Counter()  # "path -> status" -> count
        self.wrong = []  # reads that did not match the last acknowledged write
        self.pids = set()
        self.backends = set()  # (worker's pid, its database backend's pid)

    def call(self, path):
        self.requests += 1
        try:
            with self.opener.open(self.url + path, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            self.errors[f"{path.split('?')[0]} -> {error.code}"] += 1
            return None
        except OSError as error:
            self.errors[f"{path.split('?')[0]} -> {type(error).__name__}"] += 1
            return None
        self.pids.add(body["pid"])
        if "backend" in body:
            self.backends.add((body["pid"], body["backend"]))
        return body

    def run(self):
        acked = None  # the session's counter, as the last write acknowledged it
        for _ in range(ROUNDS):
            if acked is None:
                body = self.call(f"/login?name={self.name}")
                acked = body and body["n"]
                continue
            body = self.call("/note")
            if body is not None:
                acked = body["n"]
            body = self.call("/whoami")
            if body is not None and (body["n"], body["notes"]) != (acked, acked):
                self.wrong.append((acked, body))
        self.call("/whoami")


def backends_left(dsn, wait=10.0):
    """The app's connections open on the server, once those closed have gone (up to ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        (count,) = sql(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'forked_app'")[0]
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


@pytest.mark.parametrize("startup", ["lazy", "queries_at_start"])
def test_preloaded_gunicorn_workers_on_the_apps_engine_share_no_connection(
    startup, pgstore_dsn, pgstore_url, tmp_path
):
    """Two workers forked after the include, several hundred requests from
    concurrent browsers: none fails, none reads another's state, no database
    connection serves both. ``lazy``: the app of docs/sqlalchemy.rst, which opens no
    connection of its own before the fork (and the process that forks keeps
    none of the store's); ``queries_at_start``: an app that queries its
    engine once it has included everything, so that the engine's pool holds
    the app's own connection when gunicorn forks."""
    # The app's table, as its migrations would have made it.
    columns = "id serial PRIMARY KEY, name text NOT NULL, notes int NOT NULL DEFAULT 0"
    sql(pgstore_dsn, f"CREATE TABLE IF NOT EXISTS forked_users ({columns})")
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[app:main]\n"
        "use = call:forked_app:main\n"
        f"sqlalchemy.url = {pgstore_url}?application_name=forked_app\n"
        "pgstore.engine = sqlalchemy.\n"
        f"pgstore.secret = {'forked-' * 8}\n"
        f"app.query_at_start = {startup == 'queries_at_start'}\n"
    )
    server = Gunicorn(ini, tmp_path / "gunicorn.log")
    try:
        held_by_the_master = backends_left(pgstore_dsn)  # the workers have connected to nothing yet
        clients = [Client(server.url, f"user{i}") for i in range(CLIENTS)]
        threads = [threading.Thread(target=client.run) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    finally:
        server.stop()
    requests = sum(client.requests for client in clients)
    errors = sum((client.errors for client in clients), collections.Counter())
    wrong = [read for client in clients for read in client.wrong]
    pids = set().union(*(client.pids for client in clients))
    workers_of = collections.defaultdict(set)  # a backend's pid -> the workers it served
    for worker, backend in set().union(*(client.backends for client in clients)):
        workers_of[backend].add(worker)
    shared = {backend: workers for backend, workers in workers_of.items() if len(workers) > 1}
    print(
        f"{startup}: {requests} requests, {errors.total()} errors {dict(errors)}, {len(wrong)} wrong reads,"
    )
    print(f"  {len(shared)} database connections that served both workers")
    assert requests >= 600
    assert len(pids) == 2, "both workers served requests"
    assert not errors, (
        f"{dict(errors)} in {requests} requests; gunicorn's log:\n{server.log.read_text()[-3000:]}"
    )
    assert not wrong
    assert not shared, "one database connection served both workers"
    if startup == "lazy":  # nothing of the include's stays open in the process that forks
        assert held_by_the_master == 0
