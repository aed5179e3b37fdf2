"""Many app servers, one session store: three separate waitress processes.

Each process (demo/api.py) has its own interpreter and its own pool
on one database, straight to PostgreSQL or through PgBouncer in transaction
mode. A client with one cookie jar moves between them the way a load
balancer without sticky sessions would send it. The processes are started
once for the module, share one secret (as every server of a deployment
must), and are stopped at its end; each test starts on an emptied table.
"""

import http.cookiejar
import json
import secrets
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from demo import api as wsgi_server


@pytest.fixture(scope="module", params=["direct", "pgbouncer"])
def servers(request, pgstore_server, tmp_path_factory):
    """Three server processes on this run's database."""
    if request.param == "pgbouncer":
        dsn = request.getfixturevalue("pgstore_pgbouncer_dsn")
    else:
        dsn = pgstore_server.dsn
    env = {"PGSTORE_DSN": dsn, "PGSTORE_SECRET": secrets.token_urlsafe(48), "PGSTORE_POOL_MAX": "4"}
    processes = wsgi_server.start(3, env, tmp_path_factory.mktemp(f"wsgi-{request.param}"))
    yield processes
    for process in processes:
        process.stop()


class Client:
    """A browser: one cookie jar, whichever server it talks to."""

    def __init__(self, cookie=None):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.headers = {"Cookie": f"session={cookie}"} if cookie else {}

    def get(self, server, path, **params):
        url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers=self.headers)  # noqa: S310 - http://127.0.0.1 only
        with self.opener.open(request, timeout=15) as response:
            return json.load(response)

    @property
    def cookie(self):
        values = [cookie.value for cookie in self.jar if cookie.name == "session"]
        return values[0] if values else None


def count_sessions(dsn):
    """Sessions in the table: an ended one stays a moment as a row without data."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM http_sessions WHERE data <> ''")
        (count,) = cur.fetchone()
    conn.close()
    return count


def test_one_client_logs_in_on_a_writes_on_b_reads_on_c_and_logs_out_on_a(servers, pgstore_dsn):
    a, b, c = servers
    client = Client()
    anonymous = client.get(b, "/write", theme="dark")
    assert anonymous["pid"] == b.pid
    before_login = client.cookie

    assert client.get(a, "/login", user="ann") == {"pid": a.pid, "data": {"user": "ann"}, "new": True}
    assert client.cookie != before_login  # a new session id at login, on another process
    assert client.get(b, "/write", colour="blue")["data"] == {"user": "ann", "colour": "blue"}
    assert client.get(c, "/read") == {"pid": c.pid, "data": {"user": "ann", "colour": "blue"}, "new": False}
    assert count_sessions(pgstore_dsn) == 1  # the anonymous session was deleted at login

    logged_in = client.cookie
    assert client.get(a, "/logout")["data"] == {}
    assert client.cookie is None  # the logout response deleted the cookie
    for server in (b, c):
        assert client.get(server, "/read") == {"pid": server.pid, "data": {}, "new": True}
        # Gone on the server, not only forgotten by the browser: the old
        # cookie, sent again, finds nothing.
        assert Client(logged_in).get(server, "/read")["data"] == {}
    assert count_sessions(pgstore_dsn) == 0


def test_twenty_clients_spread_over_three_processes_each_count_to_twenty_five(servers, pgstore_dsn):
    clients, requests = 20, 25

    def browse(i):
        client, served_by = Client(), set()
        for n in range(requests):
            server = servers[(i + n) % len(servers)]
            reply = client.get(server, "/incr")
            assert reply["n"] == n + 1, (i, n, reply)
            served_by.add(reply["pid"])
        return client, served_by

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(browse, range(clients)))

    assert all(served_by == {s.pid for s in servers} for _, served_by in results)
    for client, _ in results:
        for server in servers:
            assert client.get(server, "/read")["data"] == {"n": requests}
    assert len({client.cookie for client, _ in results}) == clients
    assert count_sessions(pgstore_dsn) == clients
