"""The documentation (docs/) says what the code does: its examples run, its
settings table is the code's, its table of requests is what ``decide()``
does, and its API page and fixture list leave out no public name.

``make docs`` builds the pages (every warning an error); these tests keep
their content true."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
import pytest
import webtest

import pyramid_pgstore
from pyramid_pgstore.lifecycle import Cookie, Ending, Found, Owner, Situation, Stage, Write, decide
from pyramid_pgstore.settings import SETTINGS
from pytest_pgstore.localdb import free_port

DOCS = Path(__file__).parent.parent / "docs"


def page(name):
    return (DOCS / f"{name}.rst").read_text(encoding="utf-8")


def python_blocks(name):
    """Every ``.. code-block:: python`` of a page, dedented, in order."""
    blocks = []
    for match in re.finditer(
        r"^( *)\.\. code-block:: python\n\n((?:\1    .*\n|\n)+)", page(name), re.MULTILINE
    ):
        blocks.append(textwrap.dedent(match.group(2)).strip("\n") + "\n")
    return blocks


def list_table(name, caption):
    """The rows of the ``.. list-table::`` with ``caption``, each a list of cell texts."""
    text = page(name)
    start = text.index(f".. list-table:: {caption}")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("   * - "):
            rows.append([line.removeprefix("   * - ")])
        elif line.startswith("     - "):
            rows[-1].append(line.removeprefix("     - "))
        elif line.startswith("       ") and rows:  # a cell continued on the next line
            rows[-1][-1] += " " + line.strip()
        elif line and not line.startswith("   "):
            break
    return rows[1:]  # without the header row


# -- settings ---------------------------------------------------------------------------


def test_the_settings_table_lists_exactly_the_settings_parsed():
    documented = re.findall(r"^   \* - ``pgstore\.(\w+)``", page("settings"), flags=re.MULTILINE)
    assert documented == [setting.name for setting in SETTINGS]


def test_the_code_only_example_serves_sessions(pgstore_dsn, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", pgstore_dsn)
    monkeypatch.setenv("SESSION_SECRET", "x" * 48)
    namespace = {}
    exec(compile(python_blocks("settings")[0], "docs/settings.rst", "exec"), namespace)  # noqa: S102
    app = webtest.TestApp(namespace["make_app"]())
    assert app.get("/").json == {"visits": 1}
    assert app.get("/").json == {"visits": 2}
    assert webtest.TestApp(app.app).get("/").json == {"visits": 1}


# -- the session ------------------------------------------------------------------------


def test_the_503_example_turns_store_unavailable_into_a_503():
    from pyramid.config import Configurator

    from pyramid_pgstore import StoreUnavailable

    namespace = {}
    exec(compile(python_blocks("sessions")[0], "docs/sessions.rst", "exec"), namespace)  # noqa: S102

    def down(request):
        raise StoreUnavailable("the database is down")

    with Configurator() as config:
        config.add_route("down", "/")
        config.add_view(down, route_name="down")
        config.add_exception_view(namespace["unavailable"], StoreUnavailable)
    response = webtest.TestApp(config.make_wsgi_app()).get("/", status=503)
    assert response.text == "Try again shortly."


# Each row of the table "For this request: what is written, what happens to
# the cookie" (docs/sessions.rst), as the situation the session sums up.
REQUESTS = {
    "first visit, session only read": Situation(Found.NOTHING, Stage.NEW),
    "first visit, a key set": Situation(Found.NOTHING, Stage.NEW, has_data=True, changed=True),
    "signed-in page view, session only read": Situation(Found.LIVE, Stage.STORED, has_data=True),
    "the same, ``reissue_time`` passed": Situation(Found.LIVE, Stage.STORED, has_data=True, refresh_due=True),
    "the same, ``reissue_time`` passed and ``pgstore.max_age`` set": Situation(
        Found.LIVE, Stage.STORED, has_data=True, refresh_due=True, persistent_cookie=True
    ),
    "a key changed": Situation(Found.LIVE, Stage.STORED, has_data=True, changed=True),
    "login (``remember()``) over a session": Situation(
        Found.LIVE, Stage.STORED, has_data=True, changed=True, owner=Owner.SIGNED_IN
    ),
    "login with no session yet": Situation(
        Found.NOTHING, Stage.NEW, has_data=True, changed=True, owner=Owner.SIGNED_IN
    ),
    "``set_expiry()`` given a new lifetime": Situation(
        Found.LIVE, Stage.STORED, has_data=True, lifetime_changed=True
    ),
    "logout by ``forget()``, nothing else held": Situation(
        Found.LIVE, Stage.STORED, changed=True, owner=Owner.SIGNED_OUT
    ),
    "logout by ``forget()``, a cart kept": Situation(
        Found.LIVE, Stage.STORED, has_data=True, changed=True, owner=Owner.SIGNED_OUT
    ),
    "``invalidate()`` (the row ended at the call)": Situation(Found.LIVE, Stage.ENDED),
    "``invalidate()``, then a key set": Situation(Found.LIVE, Stage.ENDED, has_data=True, changed=True),
    "cookie of an expired session, a key set": Situation(Found.DEAD, Stage.NEW, has_data=True, changed=True),
    "cookie of a session another request just ended, a key set": Situation(
        Found.ENDED, Stage.NEW, has_data=True, changed=True
    ),
    "the same, a login": Situation(
        Found.ENDED, Stage.NEW, has_data=True, changed=True, owner=Owner.SIGNED_IN
    ),
    "session revoked while the request ran, a key set": Situation(
        Found.LIVE, Stage.LOST, has_data=True, changed=True
    ),
    "a key changed, pyramid_tm aborted the transaction": Situation(
        Found.LIVE, Stage.STORED, ending=Ending.ABORTED, has_data=True, changed=True
    ),
    "logout by ``forget()``, pyramid_tm aborted the transaction": Situation(
        Found.LIVE, Stage.STORED, ending=Ending.ABORTED, changed=True, owner=Owner.SIGNED_OUT
    ),
    "a key changed, the view raised, ``set_on_exception = false``": Situation(
        Found.LIVE, Stage.STORED, ending=Ending.EXCEPTION, has_data=True, changed=True
    ),
}


def test_the_table_of_requests_is_what_decide_does():
    rows = list_table("sessions", "For this request: what is written, what happens to the cookie")
    assert [row[0] for row in rows] == list(REQUESTS), "a row without its situation here, or the reverse"
    for request, found, stage, write, cookie in rows:
        situation = REQUESTS[request]
        plan = decide(situation)
        said = (found, stage, write, cookie)
        done = (situation.found.name, situation.stage.name, plan.write.name, plan.cookie.name)
        assert said == done, request


def test_the_table_names_every_write_and_every_cookie():
    rows = list_table("sessions", "For this request: what is written, what happens to the cookie")
    assert {row[3] for row in rows} == {write.name for write in Write}
    assert {row[4] for row in rows} == {cookie.name for cookie in Cookie}


def test_the_pages_name_only_settings_that_exist():
    names = {setting.name for setting in SETTINGS}
    for path in DOCS.glob("*.rst"):
        for name in re.findall(r"(?<![\w./-])pgstore\.(\w+)", path.read_text(encoding="utf-8")):
            assert name in names, f"{path.name} names pgstore.{name}, which is no setting"


# -- users ----------------------------------------------------------------------------


def test_the_security_policy_makes_remember_and_forget_sign_in_and_out(pgstore_settings):
    from pyramid.config import Configurator
    from pyramid.response import Response
    from pyramid.security import forget, remember

    namespace = {}
    exec(compile(python_blocks("users")[0], "docs/users.rst", "exec"), namespace)  # noqa: S102

    def login(request):
        remember(request, "ann")
        return Response("welcome")

    def whoami(request):
        return Response(request.authenticated_userid or "anonymous")

    def logout(request):
        forget(request)
        return Response("bye")

    with Configurator(settings=pgstore_settings) as config:
        config.include("pyramid_pgstore")
        config.set_security_policy(namespace["SecurityPolicy"]())
        for view in (login, whoami, logout):
            config.add_route(view.__name__, "/" + view.__name__)
            config.add_view(view, route_name=view.__name__)
    app = webtest.TestApp(config.make_wsgi_app())
    app.get("/login")
    assert app.get("/whoami").text == "ann"
    # the row's userid column, which list_sessions and the scripts read:
    with pyramid_pgstore.PGStore(pgstore_settings["pgstore.dsn"]) as store:
        assert [info.userid for info in store.sessions_of("ann")] == ["ann"]
    app.get("/logout")
    assert app.get("/whoami").text == "anonymous"


# -- testing your app -------------------------------------------------------------------


def test_the_complete_example_passes_in_a_downstream_suite(pytester):
    complete, unit = python_blocks("testing")
    pytester.makepyfile(test_login=complete, test_unit=unit)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_every_fixture_of_the_plugin_is_documented(pytester):
    """What ``pytest --fixtures`` lists, the testing page has as ``.. fixture::``."""
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    listed = set(
        re.findall(r"^(pgstore_\w+)(?: \[\w+ scope\])? -- ", result.stdout.str(), flags=re.MULTILINE)
    )
    documented = set(re.findall(r"^\.\. fixture:: (\w+)$", page("testing"), flags=re.MULTILINE))
    assert listed, "pytest --fixtures listed none of the plugin's fixtures"
    assert documented == listed


def test_every_option_of_the_plugin_is_documented(pytester):
    result = pytester.runpytest_subprocess("--help", "-p", "no:cacheprovider")
    options = set(re.findall(r"(--pgstore-[\w-]+)", result.stdout.str()))
    documented = set(re.findall(r"^``(--pgstore-[\w-]+)``", page("testing"), flags=re.MULTILINE))
    assert options and documented == options


# -- the development database -----------------------------------------------------------


def test_the_development_database_recipe_starts_a_server_an_app_can_use(tmp_path):
    script = next(block for block in python_blocks("quickstart") if "LocalPostgres" in block)
    port = free_port()  # the page's fixed port may be taken on a shared machine
    (tmp_path / "devdb.py").write_text(script.replace("port=5433", f"port={port}"), encoding="utf-8")

    def run(*args):
        done = subprocess.run(
            [sys.executable, "devdb.py", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        printed = run().strip().splitlines()[-1]
        assert printed == f"pgstore.dsn = host=127.0.0.1 port={port} user=postgres dbname=myapp"
        dsn = printed.removeprefix("pgstore.dsn = ")
        with pyramid_pgstore.PGStore(dsn) as store:  # the server outlived the script
            store.save("a" * 43, {"visits": 1}, ttl=60)
            assert store.load("a" * 43).data == {"visits": 1}
        assert run().strip().splitlines()[-1] == printed  # again: the same server, the same database
    finally:
        run("stop")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn, connect_timeout=2).close()


# -- the API reference ------------------------------------------------------------------


def test_every_public_name_is_in_the_api_reference():
    api = page("api")
    assert ".. module:: pyramid_pgstore\n" in api
    documented = set(
        re.findall(r"^\.\. (?:auto)?(?:class|function|exception|data):: ([\w.]+)", api, flags=re.MULTILINE)
    )
    missing = [name for name in pyramid_pgstore.__all__ if name not in documented]
    assert not missing, f"not in docs/api.rst: {missing}"


def test_every_page_is_in_the_table_of_contents():
    index = page("index")
    for path in DOCS.glob("*.rst"):
        if path.stem != "index":
            assert re.search(rf"^   {path.stem}$", index, flags=re.MULTILINE), f"{path.name} is in no toctree"
