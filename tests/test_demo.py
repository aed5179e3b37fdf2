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

from demo import main
from demo.agents import browser_name
from pytest_pgstore.localdb import LocalPostgres

ROOT = Path(__file__).parent.parent


@pytest.fixture
def demo(pgstore_settings):
    return webtest.TestApp(main({}, **pgstore_settings))


def shown(page, element_id):
    return re.search(rf'id="{element_id}">([^<]*)<', page.text).group(1)


FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def device(demo, user_agent, ip="192.0.2.1"):
    """Another browser on the same app: its own cookies, User-Agent and address."""
    return webtest.TestApp(demo.app, extra_environ={"HTTP_USER_AGENT": user_agent, "REMOTE_ADDR": ip})


def log_in(app, user):
    form = app.get("/").forms["login"]
    form["user"] = user
    return form.submit().follow()


def logged_in_devices(demo, user):
    """A laptop (Firefox) and a phone (Chrome), both logged in as ``user``."""
    laptop, phone = device(demo, FIREFOX), device(demo, CHROME)
    log_in(laptop, user)
    log_in(phone, user)
    return laptop, phone


def sign_out_forms(page):
    return [form for key, form in page.forms.items() if isinstance(key, int) and "handle" in form.fields]


def session_rows(page):
    return re.findall(r'<tr class="session[^"]*">.*?</tr>', page.text, re.S)


def test_the_counter_counts_visits_of_one_session(demo):
    assert shown(demo.get("/"), "visits") == "1"
    assert shown(demo.get("/"), "visits") == "2"
    assert shown(webtest.TestApp(demo.app).get("/"), "visits") == "1"


def test_set_clear_and_flash(demo):
    form = demo.get("/").forms["set"]
    form["value"] = "hello"
    page = form.submit().follow()
    assert shown(page, "value") == "hello"
    assert "Value set." in page.text
    assert "Value set." not in demo.get("/").text  # a flash is shown once
    page = demo.get("/").forms["clear"].submit().follow()
    assert shown(page, "value") == "(none)"


def test_a_post_without_the_csrf_token_is_refused(demo):
    demo.get("/")
    demo.post("/set", {"value": "x"}, status=400)


def test_the_csrf_failure_page_is_friendly_and_links_back(demo):
    demo.get("/")
    page = demo.post("/set", {"value": "x", "csrf_token": "wrong"}, status=400)
    assert page.content_type == "text/html"
    assert 'id="csrf-failed"' in page.text
    assert "Nothing was changed." in page.text
    assert '<a href="http://localhost/">Back to the demo</a>' in page.text
    assert "csrf" not in page.text.split('id="csrf-failed"')[1].lower()  # no jargon for the user
    assert shown(demo.get("/"), "value") == "(none)"


def test_login_changes_the_session_id_and_logout_ends_the_session(demo):
    demo.get("/")
    before = shown(demo.get("/"), "key")
    page = log_in(demo, "ann")
    assert shown(page, "user") == "ann"
    assert shown(page, "key") not in ("not stored yet", before)
    page = demo.get("/").forms["logout"].submit().follow()
    assert shown(page, "user") == "nobody"


def test_login_keeps_the_value_set_before_it_and_says_so(demo):
    form = demo.get("/").forms["set"]
    form["value"] = "my cart"
    form.submit()
    before = shown(demo.get("/"), "key")
    page = log_in(demo, "ann")
    assert shown(page, "value") == "my cart"
    assert shown(page, "key") != before
    assert "Welcome, ann: your session has a new id and kept its data." in page.text
    assert "The value you stored before is still here." in page.text
    assert "renew_on_login" in page.text  # the page explains it, not only the flash


def test_logout_shows_a_notice_and_leaves_nothing_of_the_session(demo):
    form = demo.get("/").forms["set"]
    form["value"] = "secret"
    form.submit()
    log_in(demo, "ann")
    page = demo.get("/").forms["logout"].submit().follow()
    assert "You are logged out. Your session was deleted; this is a new one." in page.text
    assert shown(page, "user") == "nobody"
    assert shown(page, "value") == "(none)"
    assert shown(page, "visits") == "1"
    assert "You are logged out" not in demo.get("/").text


@pytest.mark.parametrize("how", ["big button", "set form"])
def test_a_value_over_max_length_shows_a_message_and_keeps_the_session(demo, how):
    form = demo.get("/").forms["set"]
    form["value"] = "kept"
    form.submit()
    log_in(demo, "ann")
    key = shown(demo.get("/"), "key")
    if how == "big button":
        response = demo.get("/").forms["big"].submit()
    else:
        form = demo.get("/").forms["set"]
        form["value"] = "y" * 5000
        response = form.submit()
    assert response.status_int == 303
    page = response.follow()
    error = shown(page, "error")
    assert error.startswith("Not saved: that would have made the session ")
    assert "over pgstore.max_length (4096 bytes). Your session was kept as it was." in error
    assert shown(page, "value") == "kept"
    assert shown(page, "user") == "ann"
    assert shown(page, "key") == key
    assert "Value set." not in page.text


def test_a_page_view_over_max_length_gets_a_page_of_its_own(pgstore_settings):
    """A GET cannot be redirected to the demo page (it would fail again)."""
    app = webtest.TestApp(main({}, **pgstore_settings, **{"pgstore.max_length": "40"}))
    page = app.get("/", status=413)
    assert "over pgstore.max_length (40 bytes)" in shown(page, "error")
    assert page.forms["clear"].action == "/clear"


def test_a_too_large_query_parameter_is_only_ever_a_number(demo):
    assert 'id="error"' not in demo.get("/?too_large=<script>").text
    assert "the session 123 bytes" in shown(demo.get("/?too_large=123"), "error")


def test_a_name_is_escaped(demo):
    page = log_in(demo, "<b>ann</b>")
    assert shown(page, "user") == "&lt;b&gt;ann&lt;/b&gt;"
    assert "<b>ann" not in page.text


def test_your_sessions_needs_a_login(demo):
    page = demo.get("/sessions")
    assert "You are not logged in." in page.text
    assert not sign_out_forms(page)


def test_your_sessions_lists_the_devices_of_the_user_and_marks_this_one(demo):
    laptop, phone = device(demo, FIREFOX, "192.0.2.1"), device(demo, CHROME, "192.0.2.2")
    log_in(laptop, "ann")
    log_in(phone, "ann")
    log_in(device(demo, CHROME), "bob")  # someone else's: not listed
    page = laptop.get("/sessions")
    rows = session_rows(page)
    assert len(rows) == 2
    assert "on 2 devices" in page.text
    [current] = [row for row in rows if "this device" in row]
    assert "Firefox on Windows" in current
    assert f'title="{FIREFOX}"' in current
    assert "192.0.2.1" in current
    assert 'name="handle"' not in current
    [other] = [row for row in rows if row != current]
    assert "Chrome on Linux" in other
    assert "192.0.2.2" in other
    assert "this device" not in other
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</td>", other)
    assert len(sign_out_forms(page)) == 1
    assert page.forms["sign-out-others"].action == "/sessions/sign-out-others"


def test_a_user_agent_is_escaped_on_your_sessions(demo):
    app = device(demo, 'Evil/1.0 "><script>alert(1)</script>')
    log_in(app, "ann")
    page = app.get("/sessions")
    assert "<script>" not in page.text
    assert 'title="Evil/1.0 &quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page.text


def test_signing_out_a_device_makes_that_device_anonymous(demo):
    laptop, phone = logged_in_devices(demo, "ann")
    form = phone.get("/").forms["set"]
    form["value"] = "on the phone"
    form.submit()
    [sign_out] = sign_out_forms(laptop.get("/sessions"))
    page = sign_out.submit().follow()
    assert "Signed out that device" in page.text
    assert len(session_rows(page)) == 1
    assert shown(page, "user") == "ann"
    page = phone.get("/")
    assert shown(page, "user") == "nobody"
    assert shown(page, "value") == "(none)"  # the whole session ended
    assert "You are not logged in." in phone.get("/sessions").text
    assert shown(laptop.get("/"), "user") == "ann"


def test_signing_out_a_device_with_a_stale_form_says_nothing_happened(demo):
    laptop, _phone = logged_in_devices(demo, "ann")
    [sign_out] = sign_out_forms(laptop.get("/sessions"))
    sign_out.submit()
    page = sign_out.submit().follow()
    assert "Nothing signed out: that device was already signed out." in page.text


def test_another_users_handle_signs_nothing_out(demo):
    ann, ann_phone, bob = device(demo, FIREFOX), device(demo, CHROME), device(demo, CHROME)
    log_in(ann, "ann")
    log_in(ann_phone, "ann")
    log_in(bob, "bob")
    [sign_out] = sign_out_forms(ann.get("/sessions"))
    handle = sign_out["handle"].value
    csrf = bob.get("/").forms["logout"]["csrf_token"].value
    page = bob.post("/sessions/sign-out", {"handle": handle, "csrf_token": csrf}).follow()
    assert "Nothing signed out" in page.text
    assert shown(ann_phone.get("/"), "user") == "ann"


def test_sign_out_all_other_devices(demo):
    laptop, phone, tablet = device(demo, FIREFOX), device(demo, CHROME), device(demo, CHROME)
    for app in (laptop, phone, tablet):
        log_in(app, "ann")
    page = laptop.get("/sessions").forms["sign-out-others"].submit().follow()
    assert "Signed out 2 other devices." in page.text
    [row] = session_rows(page)
    assert "this device" in row
    assert shown(phone.get("/"), "user") == "nobody"
    assert shown(tablet.get("/"), "user") == "nobody"
    assert shown(laptop.get("/"), "user") == "ann"


def test_signing_out_without_the_csrf_token_is_refused(demo):
    laptop, phone = logged_in_devices(demo, "ann")
    [sign_out] = sign_out_forms(laptop.get("/sessions"))
    laptop.post("/sessions/sign-out", {"handle": sign_out["handle"].value}, status=400)
    laptop.post("/sessions/sign-out-others", status=400)
    assert shown(phone.get("/"), "user") == "ann"


@pytest.mark.parametrize(
    ("user_agent", "name"),
    [
        (FIREFOX, "Firefox on Windows"),
        (CHROME, "Chrome on Linux"),
        (CHROME.replace("Chrome/", "HeadlessChrome/"), "Headless Chrome on Linux"),
        (
            "Mozilla/5.0 (Windows NT 10.0) Chrome/126.0 Safari/537.36 Edg/126.0",
            "Edge on Windows",
        ),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Safari/604.1", "Safari on iOS"),
        (
            "Mozilla/5.0 (Linux; Android 14) Chrome/126.0 Mobile Safari/537.36",
            "Chrome on Android",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
            "Safari on macOS",
        ),
        ("curl/8.5.0", "curl"),
        ("Mozilla/5.0 (X11; Linux x86_64) SomethingNew/1.0", "a browser on Linux"),
        ("", "unknown browser"),
        (None, "unknown browser"),
    ],
)
def test_browser_names(user_agent, name):
    assert browser_name(user_agent) == name


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoProcess:
    """What ``make demo`` runs, with no DSN configured, in a scratch directory."""

    def __init__(self, directory, port, nohup=False):
        env = {key: value for key, value in os.environ.items() if key != "PGSTORE_DSN"}
        ignore_hangup = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None
        self.url, self.env = f"http://127.0.0.1:{port}/", env
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "demo" / "serve.py"), "development.ini"],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=ignore_hangup,
        )
        cookies = urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        self.opener = urllib.request.build_opener(cookies)

    def get(self, timeout=60):
        """The home page, once the demo serves it (within ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.opener.open(self.url, timeout=5).read().decode()
            except OSError:
                assert self.process.poll() is None, self.process.stdout.read()
                assert time.monotonic() < deadline, f"the demo did not start within {timeout} s"
                time.sleep(0.2)

    def end(self, signum):
        """Send ``signum``; return the demo's output."""
        self.process.send_signal(signum)
        output, _ = self.process.communicate(timeout=60)
        return output


@pytest.fixture
def demo_dir(tmp_path):
    port = free_port()
    ini = (ROOT / "development.ini").read_text().replace("localhost:6543", f"127.0.0.1:{port}")
    (tmp_path / "development.ini").write_text(ini)
    yield tmp_path, port
    data = tmp_path / "var" / "pg" / "data"
    if (data / "postmaster.pid").exists():  # a failed test must not leave a server behind
        LocalPostgres(tmp_path / "var" / "pg", log=lambda message: None).stop("immediate")


def test_make_demo_starts_postgresql_serves_the_counter_and_stops_it(demo_dir):
    directory, port = demo_dir
    demo = DemoProcess(directory, port)
    try:
        first = demo.get()
        second = demo.get()
        assert 'id="visits">1<' in first
        assert 'id="visits">2<' in second
    finally:
        output = demo.end(signal.SIGTERM)
    assert "PostgreSQL on 127.0.0.1" in output
    assert "PostgreSQL stopped" in output
    assert (directory / "var" / "pg" / "data" / "PG_VERSION").exists()  # kept for the next run
    assert not (directory / "var" / "pg" / "data" / "postmaster.pid").exists()


def test_make_demo_after_a_killed_run_stops_its_postgresql_and_serves_and_sighup_stops_it(demo_dir):
    """A demo killed outright leaves its PostgreSQL running; the next run
    stops that one and starts again, and a closed terminal (SIGHUP) stops
    the server cleanly."""
    directory, port = demo_dir
    killed = DemoProcess(directory, port)
    try:
        killed.get()
    finally:
        killed.end(signal.SIGKILL)
    assert (directory / "var" / "pg" / "data" / "postmaster.pid").exists()  # left running

    again = DemoProcess(directory, port)
    try:
        assert 'id="visits">1<' in again.get()
        second = subprocess.run(
            [sys.executable, str(ROOT / "demo" / "serve.py"), "development.ini"],
            cwd=directory,
            env=again.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "another demo is running" in second.stderr
        assert 'id="visits">' in again.get()  # the running one keeps its server
    finally:
        output = again.end(signal.SIGHUP)
    assert "an earlier run left running" in output
    assert "PostgreSQL stopped" in output
    assert not (directory / "var" / "pg" / "data" / "postmaster.pid").exists()


def test_make_demo_under_nohup_survives_a_hangup(demo_dir):
    directory, port = demo_dir
    demo = DemoProcess(directory, port, nohup=True)
    try:
        demo.get()
        demo.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert demo.process.poll() is None
        assert 'id="visits">' in demo.get()
    finally:
        output = demo.end(signal.SIGTERM)
    assert "PostgreSQL stopped" in output


def test_a_stale_pid_file_naming_another_process_is_not_taken_for_the_server(tmp_path):
    """After a crash the pid in postmaster.pid may belong to another process
    by now: it must never be sent the server's stop signal."""
    server = LocalPostgres(tmp_path / "pg", log=lambda message: None)
    server.init()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (server.data / "postmaster.pid").write_text(f"{other.pid}\n{server.data}\n")
        assert server.pid is None
        assert not server.running
        server.stop()
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def test_keep_me_signed_in_gives_a_cookie_that_outlives_the_browser(demo, pgstore_clock):
    form = demo.get("/").forms["login"]
    form["user"] = "ann"
    form["keep"] = True
    response = form.submit()
    (cookie,) = [h for h in response.headers.getall("Set-Cookie") if h.startswith("session=")]
    assert "Max-Age=2592000" in cookie
    assert "30 days" in response.follow().text
    pgstore_clock.advance(2 * 86400)  # far past the default 20 minutes without use
    assert shown(demo.get("/"), "user") == "ann"


def test_without_the_box_the_session_is_a_browser_session(demo, pgstore_clock):
    response = log_in(demo, "ann")
    assert shown(response, "user") == "ann"
    pgstore_clock.advance(1201)
    assert shown(demo.get("/"), "user") == "nobody"


def test_your_sessions_shows_each_lifetime_and_the_sign_in_notices(demo):
    user = "lifetimes-" + os.urandom(4).hex()  # the notices are kept per process, by user
    laptop = device(demo, FIREFOX, ip="198.51.100.7")
    form = laptop.get("/").forms["login"]
    form["user"] = user
    form["keep"] = True
    form.submit()
    phone = device(demo, CHROME)
    log_in(phone, user)
    page = phone.get("/sessions")
    lifetimes = re.findall(r'<td class="lifetime">([^<]*)</td>', page.text)
    assert sorted(lifetimes) == ["20 minutes without use", "30 days without use (kept signed in)"]
    notices = re.findall(r'<li class="sign-in">([^<]*)</li>', page.text)
    assert len(notices) == 2
    assert "a sign-in on Chrome on Linux" in notices[0]  # the newest first
    assert "a sign-in on Firefox on Windows from 198.51.100.7" in notices[1]
