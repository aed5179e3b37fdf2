"""``pgstore-sessions INI list|revoke USERID``: an operator's view of one user's sessions."""

import os
import subprocess
import sys

import pytest
import webtest
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator

from pyramid_pgstore.scripts.sessions import main

auth = SessionAuthenticationHelper()


def login(request):
    auth.remember(request, request.params["user"])
    return {}


@pytest.fixture
def router(pgstore_settings):
    config = Configurator(settings=pgstore_settings)
    config.include("pyramid_pgstore")
    config.add_route("login", "/login")
    config.add_view(login, route_name="login", renderer="json")
    return config.make_wsgi_app()


@pytest.fixture
def ini(tmp_path, pgstore_dsn):
    path = tmp_path / "app.ini"
    path.write_text(f"[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = {pgstore_dsn}\n")
    return str(path)


def sign_in(router, user, agent):
    browser = webtest.TestApp(router, extra_environ={"REMOTE_ADDR": "192.0.2.7", "HTTP_USER_AGENT": agent})
    browser.get(f"/login?user={user}")
    return browser


def test_list_prints_one_line_per_live_session_of_the_user(router, ini, capsys):
    sign_in(router, "42", "Firefox on   Linux")
    sign_in(router, "42", "Safari")
    sign_in(router, "7", "Edge")
    assert main(["pgstore-sessions", ini, "list", "42"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    handle, _created, _seen, ip, agent = lines[0].split("  ", 4)
    assert len(handle) == 64 and ip == "192.0.2.7"
    assert agent == "Safari"  # the most recently seen first
    assert lines[1].endswith("192.0.2.7  Firefox on Linux")  # one line, whatever the header held


def test_list_of_a_user_without_sessions_prints_nothing_and_says_so(router, ini, capsys):
    assert main(["pgstore-sessions", ini, "list", "nobody"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no live sessions of user 'nobody'" in err


def test_revoke_signs_the_user_out_everywhere_and_says_how_many(router, ini, capsys):
    for user, agent in [("42", "a"), ("42", "b"), ("7", "c")]:
        sign_in(router, user, agent)
    assert main(["pgstore-sessions", ini, "revoke", "42"]) == 0
    assert capsys.readouterr().out == "revoked 2 sessions of user '42'\n"
    assert main(["pgstore-sessions", ini, "list", "42"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["pgstore-sessions", ini, "list", "7"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such.ini", "list", "42"], "no such config file: /no/such.ini"),
        (["{ini}", "list", "42", "pgstore.pool_timeout=soon"], "pgstore.pool_timeout"),
        (["{ini}", "list", "42", "not-a-pair"], "not-a-pair"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(ini, capsys, argv, message):
    assert main(["pgstore-sessions", *(arg.format(ini=ini) for arg in argv)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("pgstore-sessions: ")


@pytest.mark.parametrize("argv", [[], ["{ini}"], ["{ini}", "drop", "42"], ["{ini}", "list"]])
def test_usage_errors_exit_2(ini, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["pgstore-sessions", *(arg.format(ini=ini) for arg in argv)])
    assert info.value.code == 2
    assert "usage: pgstore-sessions" in capsys.readouterr().err


def test_an_unreachable_database_exits_1(tmp_path, capsys):
    path = tmp_path / "down.ini"
    path.write_text(
        "[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = host=127.0.0.1 port=9 user=x dbname=x\n"
    )
    assert main(["pgstore-sessions", str(path), "revoke", "42"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pgstore-sessions: database error: cannot connect") and "Traceback" not in err


def test_the_installed_console_script(router, ini):
    sign_in(router, "42", "curl")
    script = os.path.join(os.path.dirname(sys.executable), "pgstore-sessions")
    env = {**os.environ, "PYTHONWARNINGS": "ignore:pkg_resources is deprecated"}
    done = subprocess.run([script, ini, "revoke", "42"], capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stdout) == (0, "revoked 1 session of user '42'\n"), done.stderr
