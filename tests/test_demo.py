"""The demo app, through WebTest and as ``make demo`` runs it."""

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import webtest

from pyramid_pgstore.demo import main

ROOT = Path(__file__).parent.parent


@pytest.fixture
def demo(pgstore_settings):
    return webtest.TestApp(main({}, **pgstore_settings))


def shown(page, element_id):
    return re.search(rf'id="{element_id}">([^<]*)<', page.text).group(1)


def test_the_counter_counts_visits_of_one_session(demo):
    assert shown(demo.get("/"), "visits") == "1"
    assert shown(demo.get("/"), "visits") == "2"
    assert shown(webtest.TestApp(demo.app).get("/"), "visits") == "1"


def test_set_clear_and_flash(demo):
    form = demo.get("/").forms[0]
    form["value"] = "hello"
    page = form.submit().follow()
    assert shown(page, "value") == "hello"
    assert "Value set." in page.text
    assert "Value set." not in demo.get("/").text  # a flash is shown once
    page = demo.get("/").forms[1].submit().follow()
    assert shown(page, "value") == "(none)"


def test_a_post_without_the_csrf_token_is_refused(demo):
    demo.get("/")
    demo.post("/set", {"value": "x"}, status=400)


def test_login_changes_the_session_id_and_logout_ends_the_session(demo):
    demo.get("/")
    before = shown(demo.get("/"), "key")
    form = demo.get("/").forms[3]
    form["user"] = "ann"
    page = form.submit().follow()
    assert shown(page, "user") == "ann"
    assert shown(page, "key") not in ("not stored yet", before)
    page = demo.get("/").forms[4].submit().follow()
    assert shown(page, "user") == "nobody"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_demo_starts_postgresql_serves_the_counter_and_stops_it(tmp_path):
    """What ``make demo`` runs, with no DSN configured, in a scratch directory."""
    port = free_port()
    ini = (ROOT / "development.ini").read_text().replace("localhost:6543", f"127.0.0.1:{port}")
    (tmp_path / "development.ini").write_text(ini)
    env = {key: value for key, value in os.environ.items() if key != "PGSTORE_DSN"}
    server = subprocess.Popen(
        [sys.executable, "-m", "pyramid_pgstore.demo.serve", "development.ini"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        deadline = time.monotonic() + 60
        while True:
            try:
                first = opener.open(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the demo did not start within 60 s"
                time.sleep(0.2)
        second = opener.open(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert 'id="visits">1<' in first
        assert 'id="visits">2<' in second
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert "PostgreSQL on 127.0.0.1" in output
    assert "PostgreSQL stopped" in output
    assert (tmp_path / "var" / "pg" / "data" / "PG_VERSION").exists()  # kept for the next run
    assert not (tmp_path / "var" / "pg" / "data" / "postmaster.pid").exists()
