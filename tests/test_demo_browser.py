"""The demo in a real browser: two headless Chromium profiles, one user.

Each profile is a chromedriver process with one WebDriver session and its own
``--user-data-dir``, so the two have separate cookies, as two devices do.
They are driven over the W3C WebDriver HTTP API with urllib (no selenium).
The demo is served by waitress on loopback in a thread (tests/served.py).

Skipped where no Chromium or chromedriver can be found (Debian: ``apt-get
install chromium chromium-driver``; ``make test`` installs them when run as
root). ``$CHROMIUM`` and ``$CHROMEDRIVER`` name other programs.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from served import Served

from demo import main

CHROMIUM_NAMES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
CHROMEDRIVER_NAMES = ["chromedriver"]
# Debian's chromium-driver also puts it next to the browser.
CHROMEDRIVER_PATHS = ["/usr/lib/chromium/chromedriver"]

# What Chromium needs to run headless as root in a container, and to stay
# off the network and quiet.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,800",
]

# The key of an element reference in WebDriver's JSON.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
WAIT = 15  # seconds for a page to show what is expected


def find_program(variable, names, paths=()):
    """The program ``$variable`` names, else the first of ``names`` on PATH,
    else the first of ``paths`` that is executable; None if none is."""
    given = os.environ.get(variable)
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((path for path in paths if os.access(path, os.X_OK)), None)


class WebDriverError(Exception):
    """An error answer of chromedriver ("no such element", ...)."""

    def __init__(self, error, message):
        super().__init__(f"{error}: {message}")
        self.error = error


class Browser:
    """One Chromium profile: a chromedriver process and one session in it."""

    def __init__(self, chromium, chromedriver, directory):
        directory.mkdir(parents=True)
        self.log_path = directory / "chromedriver.log"
        with open(self.log_path, "wb") as log:
            # A process group of its own, so that quit() ends the browser
            # with it even if chromedriver does not.
            self.process = subprocess.Popen(
                [chromedriver, "--port=0"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.session = None
        try:
            self.url = f"http://127.0.0.1:{self._port()}"
            args = [*CHROMIUM_ARGS, f"--user-data-dir={directory / 'profile'}"]
            options = {"binary": chromium, "args": args}
            capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
            started = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
            self.session = started["sessionId"]
            self._call("POST", self._path("/timeouts"), {"implicit": 0, "pageLoad": 20_000, "script": 5_000})
        except BaseException:
            self.quit()
            raise

    def _port(self, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"started successfully on port (\d+)", self.log())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromedriver did not start:\n{self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def _path(self, tail):
        return f"/session/{self.session}{tail}"

    def _call(self, method, path, body=None):
        """One WebDriver command; its ``value``."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (chromedriver on loopback)
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            try:
                value = json.loads(error.read())["value"]
            except (ValueError, KeyError, TypeError):
                value = {"message": f"HTTP {error.code}"}
            raise WebDriverError(value.get("error", error.code), value.get("message", "")) from None

    def go(self, url):
        self._call("POST", self._path("/url"), {"url": url})

    def refresh(self):
        self._call("POST", self._path("/refresh"), {})

    def find_all(self, css):
        """The elements ``css`` selects now (element references)."""
        found = self._call("POST", self._path("/elements"), {"using": "css selector", "value": css})
        return [element[ELEMENT] for element in found]

    def find(self, css):
        found = self._call("POST", self._path("/element"), {"using": "css selector", "value": css})
        return found[ELEMENT]

    def text(self, css):
        """The visible text of the first element ``css`` selects."""
        return self._call("GET", self._path(f"/element/{self.find(css)}/text"))

    def texts(self, css):
        return [self._call("GET", self._path(f"/element/{element}/text")) for element in self.find_all(css)]

    def attribute(self, css, name):
        return self._call("GET", self._path(f"/element/{self.find(css)}/attribute/{name}"))

    def type(self, css, text):
        self._call("POST", self._path(f"/element/{self.find(css)}/value"), {"text": text})

    def click(self, css):
        self._call("POST", self._path(f"/element/{self.find(css)}/click"), {})

    def source(self):
        return self._call("GET", self._path("/source"))

    def wait_for_text(self, css, expected):
        """Wait until the element ``css`` selects shows ``expected`` (a page
        loading after a click, say); its whole text."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                text = self.text(css)
                if expected in text:
                    return text
            except WebDriverError:  # not there yet, or the page changed under us
                text = None
            if time.monotonic() > deadline:
                page = self.source()[:3000]
                raise AssertionError(f"{css} never showed {expected!r} (last: {text!r}):\n{page}")
            time.sleep(0.05)

    def quit(self):
        """End the session (and so the browser), then chromedriver and
        whatever is left in its process group."""
        if self.session is not None:
            try:
                self._call("DELETE", self._path(""))
            except (OSError, WebDriverError):
                pass
            self.session = None
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()

    def _signal_group(self, signum):
        """Signal chromedriver's process group: chromedriver and the browser
        it started. Only while chromedriver is not yet reaped, so that its id
        (the group's) cannot have been reused."""
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def programs():
    """(chromium, chromedriver), or the test is skipped."""
    chromium = find_program("CHROMIUM", CHROMIUM_NAMES)
    chromedriver = find_program("CHROMEDRIVER", CHROMEDRIVER_NAMES, CHROMEDRIVER_PATHS)
    if chromium is None or chromedriver is None:
        missing = " and ".join(
            name for name, path in [("chromium", chromium), ("chromedriver", chromedriver)] if path is None
        )
        pytest.skip(
            f"no {missing} found for the browser test (Debian: apt-get install chromium "
            "chromium-driver; or set $CHROMIUM and $CHROMEDRIVER)"
        )
    return chromium, chromedriver


@pytest.fixture
def open_browser(programs, tmp_path):
    """Opens a browser profile by name; every one is shut down after the test."""
    opened = []

    def open_(name):
        browser = Browser(*programs, tmp_path / name)
        opened.append(browser)
        return browser

    yield open_
    for browser in opened:
        browser.quit()


@pytest.fixture
def served_demo(programs, request):
    """The demo on ``pgstore_settings``, served on loopback. That fixture is
    asked for only after ``programs``, so that a skip starts no PostgreSQL."""
    served = Served(main({}, **request.getfixturevalue("pgstore_settings")))
    yield served
    served.close()


def log_in(browser, url, user):
    browser.go(url + "/")
    browser.type("#login input[name=user]", user)
    browser.click("#login button")
    browser.wait_for_text(".flash", f"Welcome, {user}")
    assert browser.text("#user") == user


def test_one_browser_signs_the_other_out_from_your_sessions(served_demo, open_browser):
    url = served_demo.url
    laptop, phone = open_browser("laptop"), open_browser("phone")
    log_in(laptop, url, "ann")
    log_in(phone, url, "ann")

    laptop.click("#sessions-link")
    laptop.wait_for_text("h1", "Your sessions")
    assert len(laptop.find_all("tr.session")) == 2
    assert laptop.text("tr.session.current .this-device") == "this device"
    assert laptop.texts("tr.session .ip") == ["127.0.0.1", "127.0.0.1"]
    for name in laptop.texts("tr.session .browser"):
        assert name.endswith("Chrome on Linux")
    assert "Chrome/" in laptop.attribute("tr.session .browser", "title")  # the raw User-Agent

    laptop.click("tr.session:not(.current) form.sign-out button")
    laptop.wait_for_text(".flash", "Signed out that device")
    assert len(laptop.find_all("tr.session")) == 1
    assert laptop.text("#user") == "ann"

    phone.refresh()
    phone.wait_for_text("#user", "nobody")
    phone.go(url + "/sessions")
    phone.wait_for_text("#anonymous", "You are not logged in.")

    laptop.go(url + "/")
    assert laptop.wait_for_text("#user", "ann") == "ann"


def test_find_program_finds_nothing_where_nothing_runs(monkeypatch, tmp_path):
    """What makes the browser test skip: $CHROMIUM naming nothing runnable, or no such program."""
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert find_program("CHROMIUM", CHROMIUM_NAMES) is None
    assert find_program("NO_SUCH_VARIABLE", ["no-such-program-anywhere"], [str(Path("/nonexistent"))]) is None
