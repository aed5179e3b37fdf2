"""PGStore(prepare_statements=True): the same behaviour, planned once per connection."""

import psycopg2.extensions
import psycopg2.pool
import pytest
import webtest
from db import rewrite, sql
from psycopg2.extensions import make_dsn
from pyramid.config import Configurator

from pyramid_pgstore import PGStore, PGStoreError


@pytest.fixture
def one_connection(pgstore_dsn):
    """A borrowed pool of one connection: every statement runs on it."""
    pool = psycopg2.pool.ThreadedConnectionPool(1, 1, pgstore_dsn)
    yield pool
    pool.closeall()


def prepared_names(pool):
    conn = pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
            return [name for (name,) in cur.fetchall()]
    finally:
        pool.putconn(conn)


def test_every_operation_behaves_as_with_text_statements(pgstore_dsn, pgstore_clock):
    with PGStore(pgstore_dsn, prepare_statements=True) as store:
        store.save("id-1", {"n": 1}, 60)
        assert store.load("id-1").data == {"n": 1}
        assert rewrite(store, "id-1", {"n": 2}, 60) is True
        assert store.touch("id-1", 60) is True
        assert store.load("id-1").data == {"n": 2}
        store.save("id-2", {"n": 1}, None)
        assert rewrite(store, "id-2", {"n": 2}, None) is True
        assert store.touch("id-2", None) is True
        store.save("nobody", {"n": 0}, 60)
        read = store.load("nobody")
        store.delete("nobody")
        assert rewrite(store, "nobody", {"n": 1}, 60, read) is False
        assert store.delete("id-1") is True
        assert store.load("id-1") is None
        sql(
            pgstore_dsn,
            "UPDATE http_sessions SET expires_on = now() - interval '1 s' WHERE data = '{\"n\":2}'",
        )
        assert store.load("id-2") is None
        assert store.touch("id-2", 60) is False
        # The test clock moved: text statements, the same expiry rules.
        store.save("id-3", {"n": 1}, 60)
        pgstore_clock.advance(61)
        assert store.load("id-3") is None


def test_a_statement_is_prepared_once_per_connection(one_connection):
    store = PGStore.from_pool(one_connection, prepare_statements=True)
    store.save("id-1", {"n": 1}, 60)
    before = store.stats()["queries"]
    store.load("id-1")
    assert store.stats()["queries"] - before == 2  # PREPARE, then EXECUTE
    store.load("id-1")
    assert store.stats()["queries"] - before == 3
    names = prepared_names(one_connection)
    assert len(names) == 2
    assert all(name.startswith(("pgstore_save_", "pgstore_load_")) for name in names)


def test_statements_deallocated_behind_its_back_are_prepared_again(one_connection):
    store = PGStore.from_pool(one_connection, prepare_statements=True)
    store.save("id-1", {"n": 1}, 60)
    assert store.load("id-1").data == {"n": 1}
    conn = one_connection.getconn()
    with conn.cursor() as cur:
        cur.execute("DEALLOCATE ALL")  # what a pool owner's DISCARD ALL does
    conn.commit()
    one_connection.putconn(conn)
    assert store.load("id-1").data == {"n": 1}
    assert rewrite(store, "id-1", {"n": 2}, 60) is True
    assert store.load("id-1").data == {"n": 2}


def test_a_migration_that_changes_a_result_type_is_followed(one_connection, pgstore_dsn):
    # A table of its own: the server, and so this table, outlives the test.
    store = PGStore.from_pool(one_connection, table="migrated_sessions", prepare_statements=True)
    store.save("id-1", {"n": 1}, 60)
    assert store.load("id-1").data == {"n": 1}
    sql(pgstore_dsn, "ALTER TABLE migrated_sessions ALTER COLUMN data TYPE varchar")
    # PostgreSQL refuses the old plan ("cached plan must not change result type").
    assert store.load("id-1").data == {"n": 1}
    assert store.load("id-1").data == {"n": 1}


def test_a_session_without_expiry_loads_prepared(one_connection):
    store = PGStore.from_pool(one_connection, prepare_statements=True)
    store.save("id-1", {"n": 1}, None)
    assert store.load("id-1").data == {"n": 1}


def test_stores_of_two_tables_on_one_connection_keep_apart(one_connection, pgstore_dsn):
    sql(pgstore_dsn, "CREATE SCHEMA IF NOT EXISTS other")
    first = PGStore.from_pool(one_connection, prepare_statements=True)
    second = PGStore.from_pool(one_connection, table="other.sessions", prepare_statements=True)
    first.save("id", {"table": "first"}, 60)
    second.save("id", {"table": "second"}, 60)
    assert first.load("id").data == {"table": "first"}
    assert second.load("id").data == {"table": "second"}
    # A second store of the same table reuses the statements already there.
    again = PGStore.from_pool(one_connection, prepare_statements=True)
    assert again.load("id").data == {"table": "first"}
    assert len(prepared_names(one_connection)) == 4


def test_the_setting_reaches_the_store_and_sessions_work(pgstore_settings, pgstore_dsn):
    def incr(request):
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    settings = {
        **pgstore_settings,
        "pgstore.dsn": make_dsn(pgstore_dsn, application_name="pgstore_prepared_test"),
        "pgstore.prepare_statements": "true",
        "pgstore.pool_max": "1",
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        config.add_route("incr", "/incr")
        config.add_view(incr, route_name="incr", renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    assert [app.get("/incr").json["n"] for _ in range(3)] == [1, 2, 3]
    server_side = sql(
        pgstore_dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgstore_prepared_test'"
        " AND query LIKE '%%EXECUTE pgstore_%%'",
    )
    assert server_side == [(1,)]


class ForgetfulCursor(psycopg2.extensions.cursor):
    """Prepared statements vanish before every EXECUTE, as they do when
    PgBouncer in transaction mode hands each statement another server."""

    def execute(self, query, params=None):
        if "EXECUTE pgstore_" in query:
            super().execute("DEALLOCATE ALL")
        return super().execute(query, params)


def test_behind_a_transaction_pooler_the_error_says_what_to_change(pgstore_dsn):
    pool = psycopg2.pool.ThreadedConnectionPool(1, 1, pgstore_dsn, cursor_factory=ForgetfulCursor)
    try:
        store = PGStore.from_pool(pool, prepare_statements=True)
        with pytest.raises(PGStoreError, match="prepare_statements = false"):
            store.save("id-1", {"n": 1}, 60)
        assert PGStore.from_pool(pool).load("id-1") is None  # nothing was written
        text = PGStore.from_pool(pool)
        text.save("id-1", {"n": 1}, 60)  # text statements work there
        assert text.load("id-1").data == {"n": 1}
    finally:
        pool.closeall()
