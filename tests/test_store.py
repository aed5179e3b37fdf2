"""PGStore against the real throwaway server: every public method."""

import dataclasses
import logging
import threading
import time

import psycopg2
import pytest
from db import rewrite, sql
from psycopg2.extensions import make_dsn

from pyramid_pgstore import PGStore, PGStoreError, SchemaOutdated, SessionTooLarge, StoreUnavailable
from pyramid_pgstore.store import storage_key


def test_save_then_load_returns_the_data_and_the_record(pgstore_store):
    pgstore_store.save("id-1", {"user": "ann", "n": 1}, 60)
    record = pgstore_store.load("id-1")
    assert record.data == {"user": "ann", "n": 1}
    assert record.created_on == record.modified_on
    assert record.expires_on > record.loaded_at
    assert 59 < (record.expires_on - record.loaded_at).total_seconds() <= 60


def test_load_of_an_unknown_id_is_none(pgstore_store):
    assert pgstore_store.load("never-saved") is None


def test_save_replaces_data_and_keeps_created_on(pgstore_store, pgstore_dsn):
    pgstore_store.save("id-1", {"n": 1}, 60)
    first = pgstore_store.load("id-1")
    pgstore_store.save("id-1", {"n": 2}, 60)
    second = pgstore_store.load("id-1")
    assert second.data == {"n": 2}
    assert second.created_on == first.created_on
    assert second.modified_on > first.modified_on
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") == [(1,)]


def test_the_table_holds_a_hash_of_the_id_never_the_id(pgstore_store, pgstore_dsn):
    session_id = "a-secret-session-id"
    pgstore_store.save(session_id, {"x": 1}, 60)
    dump = sql(pgstore_dsn, "SELECT key, data FROM http_sessions")
    assert dump == [(storage_key(session_id), '{"x":1}')]
    assert session_id not in repr(dump)
    assert pgstore_store.load(session_id).key == storage_key(session_id)


def test_a_session_past_its_expiry_is_not_returned(pgstore_store, pgstore_clock, pgstore_dsn):
    pgstore_store.save("id-1", {"n": 1}, 60)
    pgstore_clock.advance(59)
    assert pgstore_store.load("id-1") is not None
    pgstore_clock.advance(2)
    assert pgstore_store.load("id-1") is None
    # Still in the table: expiry is enforced on read, not by cleanup.
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") == [(1,)]


def test_a_row_expired_by_the_real_clock_is_neither_loaded_nor_written(pgstore_store, pgstore_dsn):
    # The production statements (no test clock): liveness is checked on the
    # timestamps read by load, and by an expression in the UPDATEs' WHERE.
    pgstore_store.save("id-1", {"n": 1}, 60)
    read = pgstore_store.load("id-1")  # by a request, before the row expired
    sql(pgstore_dsn, "UPDATE http_sessions SET expires_on = now() - interval '1 ms'")
    assert pgstore_store.load("id-1") is None
    assert rewrite(pgstore_store, "id-1", {"n": 2}, 60, read) is False
    assert pgstore_store.touch("id-1", 60) is False
    assert sql(pgstore_dsn, "SELECT data FROM http_sessions") == [('{"n":1}',)]


def test_a_loaded_record_is_complete_and_frozen(pgstore_store):
    # The store builds records without the dataclass's constructor (SessionRecord.of).
    pgstore_store.save("id-1", {"n": 1}, 60)
    record = pgstore_store.load("id-1")
    assert dataclasses.replace(record) == record  # every field is there for the constructor
    assert record.payload == '{"n":1}' and record.version is not None and record.read_at is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.data = {}  # type: ignore[misc]


def test_a_row_that_expires_between_its_read_and_the_write_is_not_written(pgstore_store, pgstore_dsn):
    # By the real clock, with no other write in between: the store sees that
    # the row may have expired since it was read, and checks that it is live.
    pgstore_store.save("id-1", {"n": 1}, 0.3)
    read = pgstore_store.load("id-1")
    time.sleep(0.4)
    assert rewrite(pgstore_store, "id-1", {"n": 2}, 60, read) is False
    assert pgstore_store.write("id-1", pgstore_store.draft({"n": 3}), read, 60, keep_expiry=True) is None
    assert sql(pgstore_dsn, "SELECT data FROM http_sessions") == [('{"n":1}',)]


def test_a_fractional_ttl_is_kept_to_the_microsecond(pgstore_store, pgstore_dsn):
    pgstore_store.save("id-1", {"n": 1}, 0.25)
    assert rewrite(pgstore_store, "id-1", {"n": 2}, 1.5)
    lifetime = "SELECT extract(epoch FROM expires_on - modified_on) FROM http_sessions"
    assert float(sql(pgstore_dsn, lifetime)[0][0]) == 1.5
    time.sleep(1.6)
    assert pgstore_store.load("id-1") is None


@pytest.mark.parametrize("ttl", [float("inf"), float("nan")])
def test_a_ttl_that_is_not_a_finite_number_is_refused(pgstore_store, ttl):
    pgstore_store.save("id-1", {"n": 1}, 60)
    with pytest.raises(ValueError, match="ttl must be a finite number"):
        pgstore_store.save("id-1", {"n": 2}, ttl)
    with pytest.raises(ValueError, match="ttl must be a finite number"):
        pgstore_store.touch("id-1", ttl)
    assert pgstore_store.load("id-1").data == {"n": 1}


def test_saving_over_an_expired_row_starts_a_new_session(pgstore_store, pgstore_clock):
    pgstore_store.save("id-1", {"old": True}, 10)
    created = pgstore_store.load("id-1").created_on
    pgstore_clock.advance(20)
    pgstore_store.save("id-1", {"new": True}, 10)
    record = pgstore_store.load("id-1")
    assert record.data == {"new": True}
    assert record.created_on > created


def test_ttl_none_never_expires(pgstore_store, pgstore_clock):
    pgstore_store.save("id-1", {"n": 1}, None)
    pgstore_clock.advance(10 * 365 * 86400)
    assert pgstore_store.load("id-1").data == {"n": 1}
    assert pgstore_store.delete_expired() == 0


def test_replace_and_touch_with_ttl_none_make_a_session_forever(pgstore_store, pgstore_clock, pgstore_dsn):
    pgstore_store.save("id-1", {"n": 1}, 60)
    assert rewrite(pgstore_store, "id-1", {"n": 2}, None) is True
    assert sql(pgstore_dsn, "SELECT expires_on = 'infinity' FROM http_sessions") == [(True,)]
    pgstore_store.save("id-2", {"n": 1}, 60)
    assert pgstore_store.touch("id-2", None) is True
    pgstore_clock.advance(10 * 365 * 86400)
    assert pgstore_store.load("id-1").data == {"n": 2}
    assert pgstore_store.load("id-2").data == {"n": 1}


def test_a_session_without_expiry_loads_through_the_production_statements(pgstore_store, pgstore_dsn):
    pgstore_store.save("id-1", {"n": 1}, None)
    record = pgstore_store.load("id-1")  # the clock is not moved: plain now()
    assert record.data == {"n": 1}
    assert record.expires_on.year == 9999  # 'infinity', as psycopg2 reads it
    assert sql(pgstore_dsn, "SELECT expires_on = 'infinity' FROM http_sessions") == [(True,)]


def test_touch_moves_the_expiry_only(pgstore_store, pgstore_clock):
    pgstore_store.save("id-1", {"n": 1}, 60)
    before = pgstore_store.load("id-1")
    pgstore_clock.advance(50)
    assert pgstore_store.touch("id-1", 60) is True
    pgstore_clock.advance(50)  # 100 s after the save, 50 after the touch
    after = pgstore_store.load("id-1")
    assert after.data == {"n": 1}
    assert after.modified_on == before.modified_on
    assert after.expires_on > before.expires_on


def test_touch_of_a_missing_or_expired_session_is_false(pgstore_store, pgstore_clock):
    assert pgstore_store.touch("nobody", 60) is False
    pgstore_store.save("id-1", {"n": 1}, 10)
    pgstore_clock.advance(11)
    assert pgstore_store.touch("id-1", 60) is False
    assert pgstore_store.load("id-1") is None


def test_delete(pgstore_store):
    pgstore_store.save("id-1", {"n": 1}, 60)
    assert pgstore_store.delete("id-1") is True
    assert pgstore_store.load("id-1") is None
    assert pgstore_store.delete("id-1") is False


def test_delete_expired_removes_only_expired_rows_and_counts_them(pgstore_store, pgstore_clock, pgstore_dsn):
    for i in range(25):
        pgstore_store.save(f"short-{i}", {"i": i}, 10)
    for i in range(5):
        pgstore_store.save(f"long-{i}", {"i": i}, 1000)
    assert pgstore_store.delete_expired() == 0
    pgstore_clock.advance(11)
    queries = pgstore_store.stats()["queries"]
    assert pgstore_store.delete_expired(batch_size=10) == 25
    assert pgstore_store.stats()["queries"] - queries == 3  # 10 + 10 + 5
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") == [(5,)]
    assert all(pgstore_store.load(f"long-{i}") for i in range(5))


def test_an_oversized_session_is_refused_and_the_stored_copy_kept(pgstore_dsn):
    with PGStore(pgstore_dsn, max_length=100) as store:
        store.save("id-1", {"small": "yes"}, 60)
        with pytest.raises(SessionTooLarge) as info:
            store.save("id-1", {"big": "x" * 200}, 60)
        assert isinstance(info.value, ValueError)
        assert "max_length=100" in str(info.value)
        assert store.load("id-1").data == {"small": "yes"}


def test_max_length_zero_is_unlimited(pgstore_dsn):
    with PGStore(pgstore_dsn, max_length=0) as store:
        store.save("id-1", {"big": "x" * 100_000}, 60)
        assert len(store.load("id-1").data["big"]) == 100_000


def test_max_length_counts_utf8_bytes(pgstore_dsn):
    with PGStore(pgstore_dsn, max_length=30) as store:
        store.save("id-1", {"k": "é" * 11}, 60)  # {"k":"..."}: 8 bytes + 2 a character = 30
        with pytest.raises(SessionTooLarge) as info:
            store.save("id-1", {"k": "é" * 12}, 60)
        assert info.value.size == 32
        assert store.load("id-1").data == {"k": "é" * 11}


def test_an_unserializable_value_names_its_key_and_writes_nothing(pgstore_store):
    pgstore_store.save("id-1", {"ok": 1}, 60)
    with pytest.raises(TypeError, match="'when'"):
        pgstore_store.save("id-1", {"ok": 2, "when": object()}, 60)
    assert pgstore_store.load("id-1").data == {"ok": 1}


def test_a_payload_that_no_longer_deserializes_loads_as_none(pgstore_store, pgstore_dsn, caplog):
    pgstore_store.save("id-1", {"n": 1}, 60)
    sql(pgstore_dsn, "UPDATE http_sessions SET data = 'not json{'")
    with caplog.at_level(logging.WARNING, logger="pyramid_pgstore"):
        assert pgstore_store.load("id-1") is None
    assert "does not deserialize" in caplog.text
    assert sql(pgstore_dsn, "SELECT data FROM http_sessions") == [("not json{",)]


# -- schema -------------------------------------------------------------------


def test_the_schema_matches_the_contract(pgstore_store, pgstore_dsn):
    columns = sql(
        pgstore_dsn,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = 'http_sessions' ORDER BY ordinal_position",
    )
    assert columns == [
        ("key", "text", "NO"),
        ("data", "text", "NO"),
        ("created_on", "timestamp with time zone", "NO"),
        ("modified_on", "timestamp with time zone", "NO"),
        ("expires_on", "timestamp with time zone", "NO"),
        ("userid", "text", "YES"),
        ("ip", "text", "YES"),
        ("user_agent", "text", "YES"),
        ("last_seen", "timestamp with time zone", "YES"),
        ("lifetime", "double precision", "YES"),
    ]
    primary_key = sql(
        pgstore_dsn,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'http_sessions'::regclass AND contype = 'p'",
    )
    assert primary_key == [("PRIMARY KEY (key)",)]
    indexes = sql(pgstore_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'http_sessions'")
    assert any(d.endswith("(expires_on)") for (d,) in indexes)
    assert any(d.endswith("(userid) WHERE (userid IS NOT NULL)") for (d,) in indexes)
    comment = sql(pgstore_dsn, "SELECT obj_description('http_sessions'::regclass, 'pg_class')")
    assert comment == [("pyramid_pgstore schema 3",)]


def test_a_schema_qualified_table(pgstore_dsn):
    sql(pgstore_dsn, "CREATE SCHEMA IF NOT EXISTS auth")
    with PGStore(pgstore_dsn, table="auth.sessions") as store:
        store.save("id-1", {"n": 1}, 60)
        assert store.load("id-1").data == {"n": 1}
    assert sql(pgstore_dsn, "SELECT count(*) FROM auth.sessions") == [(1,)]


@pytest.mark.parametrize(
    "name",
    ['x"; DROP TABLE http_sessions; --', "a.b.c", "", "sessions;", "1abc", "a" * 64, "auth."],
)
def test_a_hostile_or_invalid_table_name_is_refused(pgstore_store, pgstore_dsn, name):
    with pytest.raises(ValueError, match="invalid table name"):
        PGStore(pgstore_dsn, table=name)
    assert sql(pgstore_dsn, "SELECT to_regclass('http_sessions') IS NOT NULL") == [(True,)]


def test_create_table_false_does_not_create(pgstore_dsn):
    with PGStore(pgstore_dsn, table="not_created", create_table=False) as store:
        with pytest.raises(SchemaOutdated, match=r'relation "not_created" does not exist.*pgstore-schema'):
            store.load("id-1")
    assert sql(pgstore_dsn, "SELECT to_regclass('not_created')") == [(None,)]


@pytest.fixture
def limited_role_dsn(pgstore_store, pgstore_dsn):
    """A role that may use http_sessions but not CREATE anything."""
    role = f"limited_{threading.get_ident()}"
    sql(pgstore_dsn, f'CREATE ROLE "{role}" LOGIN')
    sql(pgstore_dsn, f'GRANT SELECT, INSERT, UPDATE, DELETE ON http_sessions TO "{role}"')
    sql(pgstore_dsn, f'REVOKE CREATE ON SCHEMA public FROM PUBLIC, "{role}"')
    yield make_dsn(pgstore_dsn, user=role)
    sql(pgstore_dsn, f'DROP OWNED BY "{role}"')
    sql(pgstore_dsn, f'DROP ROLE "{role}"')


def test_an_existing_table_needs_no_create_privilege(limited_role_dsn):
    with PGStore(limited_role_dsn) as store:
        store.save("id-1", {"n": 1}, 60)
        assert store.load("id-1").data == {"n": 1}
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        PGStore(limited_role_dsn, table="other_sessions")


# -- the pool -------------------------------------------------------------------


class TableLock:
    """Holds an exclusive lock on the table from another connection, so that
    every store statement waits while it is held."""

    def __init__(self, dsn, table="http_sessions"):
        self.conn = psycopg2.connect(dsn)
        with self.conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self):
        self.conn.rollback()
        self.conn.close()


def run_threads(count, target):
    errors, results = [], []

    def wrapped(i):
        try:
            results.append(target(i))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, errors, results


def test_four_times_more_threads_than_pool_max_all_succeed_by_waiting(pgstore_dsn):
    with PGStore(pgstore_dsn, pool_max=2, pool_timeout=30) as store:
        opened_at_start = store.stats()["connections_opened"]
        lock = TableLock(pgstore_dsn)
        threads, errors, _ = run_threads(8, lambda i: store.save(f"id-{i}", {"i": i}, 60))
        time.sleep(0.5)  # two threads hold both connections, six wait
        lock.release()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert all(store.load(f"id-{i}").data == {"i": i} for i in range(8))
        stats = store.stats()
        assert stats["waits"] >= 6
        assert stats["connections_opened"] - opened_at_start <= 2


def test_a_checkout_fails_clearly_after_pool_timeout_and_the_pool_recovers(pgstore_dsn):
    with PGStore(pgstore_dsn, pool_max=1, pool_timeout=0.3) as store:
        lock = TableLock(pgstore_dsn)
        threads, errors, _ = run_threads(2, lambda i: store.save(f"id-{i}", {"i": i}, 60))
        for thread in threads[1:]:
            thread.join(5)
        lock.release()
        threads[0].join(5)
        assert len(errors) == 1
        assert isinstance(errors[0], StoreUnavailable)
        assert "no free database connection after 0.30 s" in str(errors[0])
        assert store.load("id-0") is not None or store.load("id-1") is not None
        store.save("after", {"ok": True}, 60)
        assert store.load("after").data == {"ok": True}


def test_a_connection_handed_back_inside_a_transaction_is_closed_not_reused(pgstore_dsn):
    with PGStore(pgstore_dsn, pool_max=1) as store:
        store.save("id-1", {"n": 1}, 60)
        conn = store._checkout.getconn()
        with conn.cursor() as cur:
            cur.execute("BEGIN; UPDATE http_sessions SET data = '{}'")  # left open
        store._checkout.putconn(conn)
        assert conn.closed  # its transaction was not committed by anyone else
        opened = store.stats()["connections_opened"]
        assert store.load("id-1").data == {"n": 1}
        assert store.stats()["connections_opened"] == opened + 1


def test_a_burst_reuses_idle_connections_up_to_pool_max(pgstore_dsn):
    with PGStore(pgstore_dsn, pool_min=1, pool_max=4) as store:
        opened_at_start = store.stats()["connections_opened"]
        threads, errors, _ = run_threads(
            16,
            lambda i: [
                store.save(f"id-{i}-{n}", {"n": n}, 60) or store.load(f"id-{i}-{n}") for n in range(30)
            ],
        )
        for thread in threads:
            thread.join(60)
        assert errors == []
        # psycopg2's own pool would have closed and reopened connections
        # hundreds of times here; every one opened is kept and reused.
        assert store.stats()["connections_opened"] - opened_at_start <= 4


def test_a_connection_killed_server_side_is_replaced(pgstore_store, pgstore_dsn):
    pgstore_store.save("id-1", {"n": 1}, 60)
    killed = sql(
        pgstore_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'pyramid_pgstore' AND datname = current_database()",
    )
    assert killed and all(ok for (ok,) in killed)
    assert pgstore_store.load("id-1").data == {"n": 1}
    assert pgstore_store.stats()["discarded"] >= 1


def test_an_unreachable_server_raises_store_unavailable():
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        PGStore("host=127.0.0.1 port=9 dbname=x user=x connect_timeout=2")


def test_a_store_builds_no_connection_until_used(pgstore_dsn):
    with PGStore(pgstore_dsn) as store:
        opened = store.stats()["connections_opened"]
        assert store._checkout._current is None  # nothing inherited by forked workers
        store.load("id")
        assert store.stats()["connections_opened"] == opened + 1


# -- from_pool --------------------------------------------------------------------


@pytest.fixture
def app_pool(pgstore_dsn):
    from psycopg2.pool import ThreadedConnectionPool

    pool = ThreadedConnectionPool(1, 4, pgstore_dsn)
    yield pool
    if not pool.closed:
        pool.closeall()


def test_two_stores_on_one_pool(app_pool, pgstore_dsn):
    sql(pgstore_dsn, "CREATE SCHEMA IF NOT EXISTS other")
    first = PGStore.from_pool(app_pool)
    second = PGStore.from_pool(app_pool, table="other.sessions")
    first.save("id-1", {"store": 1}, 60)
    second.save("id-1", {"store": 2}, 60)
    assert first.load("id-1").data == {"store": 1}
    assert second.load("id-1").data == {"store": 2}
    first.close()
    assert second.load("id-1").data == {"store": 2}
    second.close()


def test_close_leaves_a_borrowed_pool_open(app_pool):
    with PGStore.from_pool(app_pool) as store:
        store.save("id-1", {"n": 1}, 60)
    assert not app_pool.closed
    conn = app_pool.getconn()
    assert conn.autocommit is False  # the owner's setting, restored
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM http_sessions")
        assert cur.fetchone() == (1,)
    conn.rollback()
    app_pool.putconn(conn)
    with pytest.raises(PGStoreError, match="closed"):
        store.load("id-1")


def test_a_borrowed_pool_that_is_exhausted_is_waited_for(app_pool):
    store = PGStore.from_pool(app_pool, pool_timeout=5)
    held = [app_pool.getconn() for _ in range(4)]
    threading.Timer(0.3, app_pool.putconn, args=(held.pop(),)).start()
    store.save("id-1", {"n": 1}, 60)  # waits for the connection given back
    assert store.stats()["waits"] == 1
    for conn in held:
        app_pool.putconn(conn)
    store.close()


# -- cleanup ----------------------------------------------------------------------


def test_run_cleanup_yields_each_runs_count_or_error(pgstore_store, pgstore_clock, pgstore_dsn):
    stop = threading.Event()
    runs = pgstore_store.run_cleanup(0.01, stop)
    pgstore_store.save("id-1", {"n": 1}, 10)
    assert next(runs) == 0
    pgstore_clock.advance(11)
    assert next(runs) == 1
    sql(pgstore_dsn, "ALTER TABLE http_sessions RENAME TO moved_away")
    try:
        assert isinstance(next(runs), psycopg2.errors.UndefinedTable)
    finally:
        sql(pgstore_dsn, "ALTER TABLE moved_away RENAME TO http_sessions")
    assert next(runs) == 0
    stop.set()
    assert list(runs) == []


def test_cleanup_thread_deletes_expired_sessions_and_survives_errors(
    pgstore_store, pgstore_clock, pgstore_dsn, caplog
):
    pgstore_store.save("id-1", {"n": 1}, 10)
    sql(pgstore_dsn, "ALTER TABLE http_sessions RENAME TO moved_away")
    with caplog.at_level(logging.ERROR, logger="pyramid_pgstore"):
        handle = pgstore_store.cleanup(0.02)
        deadline = time.monotonic() + 10
        while "cleanup failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    sql(pgstore_dsn, "ALTER TABLE moved_away RENAME TO http_sessions")
    assert "cleanup failed" in caplog.text
    assert handle.running
    pgstore_clock.advance(11)
    deadline = time.monotonic() + 10
    while sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sql(pgstore_dsn, "SELECT count(*) FROM http_sessions") == [(0,)]
    handle.stop()
    assert not handle.running


def test_close_stops_cleanup_threads(pgstore_dsn):
    store = PGStore(pgstore_dsn)
    handle = store.cleanup(60)
    store.close()
    assert not handle.running


def test_synchronous_commit_off_applies_to_the_write_only(app_pool, pgstore_dsn):
    store = PGStore.from_pool(app_pool, synchronous_commit=False)
    store.save("id-1", {"n": 1}, 60)
    assert store.touch("id-1", 120) is True
    assert store.load("id-1").data == {"n": 1}
    assert store.delete("id-1") is True
    assert store.delete("id-1") is False
    # The setting lived in each write's own transaction: the pooled
    # connections are back to the server's default.
    held = [app_pool.getconn() for _ in range(4)]
    for conn in held:
        with conn.cursor() as cur:
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone() == ("on",)
        conn.rollback()
        app_pool.putconn(conn)
    store.close()


def test_replace_writes_only_a_live_session(pgstore_store, pgstore_clock):
    pgstore_store.save("nobody", {"n": 0}, 60)
    read = pgstore_store.load("nobody")
    pgstore_store.delete("nobody")
    assert rewrite(pgstore_store, "nobody", {"n": 1}, 60, read) is False
    assert pgstore_store.load("nobody") is None
    pgstore_store.save("id-1", {"n": 1}, 10)
    assert rewrite(pgstore_store, "id-1", {"n": 2}, 10) is True
    assert pgstore_store.load("id-1").data == {"n": 2}
    read = pgstore_store.load("id-1")
    pgstore_clock.advance(11)
    assert rewrite(pgstore_store, "id-1", {"n": 3}, 10, read) is False
    assert pgstore_store.load("id-1") is None


def test_connections_detect_a_dead_network_within_pool_timeout(pgstore_dsn):
    with PGStore(pgstore_dsn, pool_timeout=7) as store:
        store.load("id")
        conn = store._checkout.getconn()
        try:
            parameters = conn.get_dsn_parameters()
        finally:
            store._checkout.putconn(conn)
    assert parameters["keepalives"] == "1"
    assert parameters["tcp_user_timeout"] == "7000"
    assert parameters["connect_timeout"] == "7"


def test_a_server_that_never_answers_delays_each_request_once_not_in_turn():
    """A host that accepts TCP but never speaks (a frozen server): every
    thread needing a connection fails after about pool_timeout, together,
    not one pool_timeout after the other."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # never accepted: the handshake completes, nothing answers
    port = listener.getsockname()[1]
    try:
        store = PGStore(f"host=127.0.0.1 port={port} user=x dbname=x", pool_timeout=2, create_table=False)
        started = time.monotonic()
        threads, errors, _ = run_threads(4, lambda i: store.load(f"id-{i}"))
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        assert len(errors) == 4 and all(isinstance(e, StoreUnavailable) for e in errors)
        assert elapsed < 2 * 2  # four in turn would take 8 s
        store.close()
    finally:
        listener.close()


def test_with_several_hosts_one_that_never_answers_costs_two_seconds_not_pool_timeout(pgstore_dsn):
    """A failover DSN whose first host is down without answering (a frozen
    or unplugged server): libpq's connect_timeout applies per host, so it
    is 2 s for a multi-host DSN, and the next host is reached after that."""
    import socket

    from psycopg2.extensions import parse_dsn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    real = parse_dsn(pgstore_dsn)
    dsn = (
        f"host=127.0.0.1,{real['host']} port={listener.getsockname()[1]},{real['port']}"
        f" user={real['user']} dbname={real['dbname']}"
    )
    try:
        with PGStore(dsn, pool_timeout=20, create_table=False) as store:
            started = time.monotonic()
            assert store.load("id-1") is None
            assert 1.5 < time.monotonic() - started < 5
    finally:
        listener.close()
