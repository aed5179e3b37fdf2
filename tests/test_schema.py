"""The table's layout: a previous release's table upgraded in place, and ``pgstore-schema``.

Each test starts from a database without ``http_sessions`` (or with the
previous release's, schema 1, made with that release's DDL) and leaves the
current table behind for the tests after it.
"""

import os
import subprocess
import sys
import threading
import time

import psycopg2
import pytest
import webtest
from db import sql
from pyramid.config import Configurator
from pyramid.interfaces import ISessionFactory

from pyramid_pgstore import PGStore, SchemaOutdated, get_store
from pyramid_pgstore.records import storage_key
from pyramid_pgstore.scripts.schema import main

SCHEMA_1 = (
    "CREATE TABLE http_sessions (key text PRIMARY KEY, data text NOT NULL,"
    " created_on timestamptz NOT NULL, modified_on timestamptz NOT NULL, expires_on timestamptz NOT NULL);"
    " CREATE INDEX http_sessions_expires_on_idx ON http_sessions (expires_on)"
)
LIVE = {"A" * 43: '{"n": 1}', "B" * 43: '{"n": 5}'}  # session id -> data, as release 0.1 wrote it
EXPIRED = "C" * 43
NEW_COLUMNS = {"userid", "ip", "user_agent", "last_seen", "lifetime"}


@pytest.fixture
def no_table(pgstore_dsn):
    sql(pgstore_dsn, "DROP TABLE IF EXISTS http_sessions")
    yield pgstore_dsn
    sql(pgstore_dsn, "DROP TABLE IF EXISTS http_sessions")
    PGStore(pgstore_dsn).close()  # the current table again, for the tests after this one


@pytest.fixture
def old_table(no_table):
    sql(no_table, SCHEMA_1)
    for session_id, data, lifetime in [*((i, d, "20 min") for i, d in LIVE.items()), (EXPIRED, "{}", "-1 s")]:
        sql(
            no_table,
            "INSERT INTO http_sessions VALUES (%s, %s, now() - interval '10 min', now() - interval '1 min',"
            " now() + %s::interval)",
            (storage_key(session_id), data, lifetime),
        )
    return no_table


@pytest.fixture
def ini(tmp_path, pgstore_dsn):
    path = tmp_path / "app.ini"
    path.write_text(f"[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = {pgstore_dsn}\n")
    return str(path)


def incr(request):
    session = request.session
    session["n"] = session.get("n", 0) + 1
    return {"n": session["n"], "new": session.new}


def make_app(pgstore_settings, **settings):
    config = Configurator(settings={**pgstore_settings, **{f"pgstore.{k}": v for k, v in settings.items()}})
    config.include("pyramid_pgstore")
    config.add_route("incr", "/incr")
    config.add_view(incr, route_name="incr", renderer="json")
    return webtest.TestApp(config.make_wsgi_app(), extra_environ={"REMOTE_ADDR": "192.0.2.1"})


def cookie_for(app, session_id):
    return {"Cookie": f"session={app.app.registry.queryUtility(ISessionFactory).cookie.value(session_id)}"}


def layout(dsn):
    """The table's columns and comment, and its indexes."""
    columns = sql(
        dsn,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'http_sessions'::regclass AND attnum > 0"
        " AND NOT attisdropped",
    )
    (comment,) = sql(dsn, "SELECT obj_description('http_sessions'::regclass, 'pg_class')")
    indexes = sql(dsn, "SELECT indexname FROM pg_indexes WHERE tablename = 'http_sessions'")
    return {c for (c,) in columns}, comment[0], {i for (i,) in indexes}


def table_exists(dsn):
    return sql(dsn, "SELECT to_regclass('http_sessions') IS NOT NULL") == [(True,)]


# -- in place, at config.include ---------------------------------------------------


def test_include_upgrades_a_schema_1_table_in_place_keeping_every_session(pgstore_settings, old_table):
    app = make_app(pgstore_settings)
    columns, comment, indexes = layout(old_table)
    assert columns >= NEW_COLUMNS
    assert comment == "pyramid_pgstore schema 3"
    assert "http_sessions_userid_idx" in indexes
    assert sql(old_table, "SELECT count(*) FROM http_sessions") == [(3,)]
    a, b = LIVE
    assert app.get("/incr", headers=cookie_for(app, a)).json == {"n": 2, "new": False}
    assert app.get("/incr", headers=cookie_for(app, b)).json == {"n": 6, "new": False}
    assert app.get("/incr", headers=cookie_for(app, EXPIRED)).json == {"n": 1, "new": True}
    assert sql(old_table, "SELECT data FROM http_sessions WHERE key = %s", (storage_key(a),)) == [
        ('{"n":2}',)
    ]
    app.reset()  # a new browser
    assert app.get("/incr").json == {"n": 1, "new": True}
    # Four sessions written by this release, each with its client's address.
    assert sql(old_table, "SELECT count(*) FROM http_sessions WHERE ip = '192.0.2.1'") == [(4,)]


SCHEMA_2 = (
    "CREATE TABLE http_sessions (key text PRIMARY KEY, data text NOT NULL,"
    " created_on timestamptz NOT NULL, modified_on timestamptz NOT NULL, expires_on timestamptz NOT NULL,"
    " userid text, ip text, user_agent text, last_seen timestamptz);"
    " CREATE INDEX http_sessions_expires_on_idx ON http_sessions (expires_on);"
    " CREATE INDEX http_sessions_userid_idx ON http_sessions USING hash (userid) WHERE userid IS NOT NULL;"
    " COMMENT ON TABLE http_sessions IS 'pyramid_pgstore schema 2'"
)


def test_include_upgrades_a_schema_2_table_keeping_sessions_and_their_users(pgstore_settings, no_table):
    sql(no_table, SCHEMA_2)
    a, _ = LIVE
    sql(
        no_table,
        'INSERT INTO http_sessions VALUES (%s, \'{"n": 1, "auth.userid": "ann"}\', now(), now(),'
        " now() + interval '20 min', 'ann', '192.0.2.9', 'curl', now())",
        (storage_key(a),),
    )
    app = make_app(pgstore_settings)
    columns, comment, _ = layout(no_table)
    assert "lifetime" in columns and comment == "pyramid_pgstore schema 3"
    assert app.get("/incr", headers=cookie_for(app, a)).json == {"n": 2, "new": False}
    assert [info.userid for info in get_store(app.app.registry).sessions_of("ann")] == ["ann"]


def test_a_process_of_the_previous_release_keeps_working_on_the_upgraded_table(pgstore_settings, old_table):
    app = make_app(pgstore_settings)
    session_id = "D" * 43
    sql(  # what 0.1 writes: its five columns only
        old_table,
        "INSERT INTO http_sessions (key, data, created_on, modified_on, expires_on)"
        " VALUES (%s, '{\"n\": 3}', now(), now(), now() + interval '20 min')",
        (storage_key(session_id),),
    )
    assert app.get("/incr", headers=cookie_for(app, session_id)).json == {"n": 4, "new": False}


def test_processes_upgrading_at_once_do_not_collide(old_table):
    """Every store has read the old layout before any upgrades: a lock the
    test holds on the table keeps them all waiting until then."""
    holder = psycopg2.connect(old_table)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE http_sessions IN SHARE MODE")
    errors, stores = [], []

    def start():
        try:
            stores.append(PGStore(old_table))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 8
    waiting = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
        " AND a.datname = current_database() AND a.application_name = 'pyramid_pgstore'"
    )
    while sql(old_table, waiting) != [(6,)]:
        assert time.monotonic() < deadline, "the stores never all waited to upgrade"
        time.sleep(0.02)
    holder.commit()
    holder.close()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(stores) == 6
    assert layout(old_table)[1] == "pyramid_pgstore schema 3"
    assert sql(old_table, "SELECT count(*) FROM http_sessions") == [(3,)]
    for store in stores:
        store.close()


def test_with_create_table_false_include_connects_to_nothing_and_the_first_request_says_what_to_run(
    pgstore_settings, old_table, ini, capsys
):
    app = make_app(pgstore_settings, create_table="false")
    assert get_store(app.app.registry).stats()["connections_opened"] == 0
    a, _ = LIVE
    with pytest.raises(SchemaOutdated) as info:
        app.get("/incr", headers=cookie_for(app, a))
    assert info.value.table == "http_sessions"
    assert "http_sessions" in str(info.value)
    assert "pgstore-schema" in str(info.value)
    assert not (layout(old_table)[0] & NEW_COLUMNS)  # nothing was changed
    assert main(["pgstore-schema", ini, "--apply"]) == 0
    # The same app, without a restart, now serves the old session.
    assert app.get("/incr", headers=cookie_for(app, a)).json == {"n": 2, "new": False}


def test_a_table_of_a_newer_release_is_refused_not_downgraded(pgstore_settings, no_table, ini, capsys):
    PGStore(no_table).close()
    sql(no_table, "COMMENT ON TABLE http_sessions IS 'pyramid_pgstore schema 4'")
    with pytest.raises(SchemaOutdated, match="upgrade pyramid_pgstore"):
        make_app(pgstore_settings)
    assert main(["pgstore-schema", ini]) == 1
    assert "newer than this release" in capsys.readouterr().err


def test_a_table_that_is_not_a_sessions_table_is_left_alone(pgstore_settings, no_table, ini, capsys):
    sql(no_table, "CREATE TABLE http_sessions (id int PRIMARY KEY)")
    with pytest.raises(SchemaOutdated, match="not a pyramid_pgstore sessions table"):
        make_app(pgstore_settings)
    assert main(["pgstore-schema", ini, "--apply"]) == 1
    assert "not a pyramid_pgstore sessions table" in capsys.readouterr().err
    assert layout(no_table)[0] == {"id"}


# -- pgstore-schema ---------------------------------------------------------------------


def run_printed_sql(dsn, text):
    """What ``psql -f`` of the printed SQL does."""
    sql(dsn, text)


def test_with_no_table_it_prints_the_create_sql_which_makes_a_table_the_store_accepts(no_table, ini, capsys):
    assert main(["pgstore-schema", ini]) == 0
    out = capsys.readouterr().out
    assert 'CREATE TABLE IF NOT EXISTS "http_sessions"' in out
    assert not table_exists(no_table)  # printed, not run
    run_printed_sql(no_table, out)
    with PGStore(no_table, create_table=False) as store:
        assert store.table_state().version == 3
        store.save("s1", {"n": 1}, 60, userid="ann")
        assert store.load("s1").data == {"n": 1}
        assert [info.userid for info in store.sessions_of("ann")] == ["ann"]
    assert main(["pgstore-schema", ini]) == 0
    assert capsys.readouterr().out == ""


def test_with_an_old_table_it_prints_the_upgrade_sql_which_keeps_the_sessions(old_table, ini, capsys):
    assert main(["pgstore-schema", ini]) == 0
    out = capsys.readouterr().out
    assert "ALTER TABLE" in out and "ADD COLUMN IF NOT EXISTS userid" in out
    assert "CREATE TABLE" not in out
    assert not (layout(old_table)[0] & NEW_COLUMNS)
    run_printed_sql(old_table, out)
    with PGStore(old_table, create_table=False) as store:
        assert store.load("A" * 43).data == {"n": 1}
        store.save("s1", {"n": 1}, 60, userid="ann")
    assert layout(old_table)[1] == "pyramid_pgstore schema 3"


def test_with_a_current_table_it_prints_no_sql_and_says_so_on_stderr(pgstore_store, ini, capsys):
    assert main(["pgstore-schema", ini]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "pgstore-schema: http_sessions is at schema 3: nothing to do\n"


def test_apply_upgrades_the_table_after_which_there_is_nothing_to_do(old_table, ini, capsys):
    assert main(["pgstore-schema", ini, "--apply"]) == 0
    assert "ALTER TABLE" in capsys.readouterr().out
    assert layout(old_table)[1] == "pyramid_pgstore schema 3"
    assert sql(old_table, "SELECT count(*) FROM http_sessions") == [(3,)]
    assert main(["pgstore-schema", ini, "--apply"]) == 0
    assert capsys.readouterr().out == ""


def test_help_says_what_it_does_and_how_it_exits(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pgstore-schema", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--apply" in out and "exit status" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such.ini"], "no such config file: /no/such.ini"),
        (["{bad}"], "pgstore.timeout"),
        (["{ini}", "pgstore.pool_timeout=soon"], "pgstore.pool_timeout"),
        (["{ini}", "not-a-pair"], "not-a-pair"),
    ],
)
def test_usage_errors_exit_2_with_one_line(ini, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.ini"
    bad.write_text(open(ini).read() + "pgstore.timeout = abc\n")
    assert main(["pgstore-schema", *(arg.format(ini=ini, bad=bad) for arg in argv)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("pgstore-schema: ")


def test_an_unknown_option_is_a_usage_error(ini, capsys):
    with pytest.raises(SystemExit) as info:
        main(["pgstore-schema", ini, "--bogus"])
    assert info.value.code == 2


def test_an_unreachable_database_exits_1(tmp_path, capsys):
    path = tmp_path / "down.ini"
    path.write_text(
        "[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = host=127.0.0.1 port=9 user=x dbname=x\n"
    )
    assert main(["pgstore-schema", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pgstore-schema: database error: cannot connect")
    assert "Traceback" not in err


def test_the_installed_console_script(no_table, ini):
    script = os.path.join(os.path.dirname(sys.executable), "pgstore-schema")
    # Pyramid itself warns that pkg_resources is deprecated, with a recent setuptools.
    env = {**os.environ, "PYTHONWARNINGS": "ignore:pkg_resources is deprecated"}
    done = subprocess.run([script, ini], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert 'CREATE TABLE IF NOT EXISTS "http_sessions"' in done.stdout
    done = subprocess.run([script, ini + ".missing"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert done.stderr == f"pgstore-schema: no such config file: {ini}.missing\n"
