"""A table Citus manages (docs/scaling.rst, "Sharding on Citus").

Citus refuses some of the statements the store runs on plain PostgreSQL, so
for such a table the store runs variants (``Statements(distributed=True)``).
Everywhere (CI has no Citus) the variants are checked to do exactly what
the plain statements do, row for row. On a Citus cluster
(``pytest --pgstore-dsn <coordinator> --pgstore-citus``, docs/scaling.rst "Sharding
on Citus") the whole suite runs on a distributed table, and the tests at the
end check what only a cluster shows; elsewhere they are skipped.
"""

import psycopg2
import pytest
from db import sql

from pyramid_pgstore import PGStore, UnsupportedStatement
from pyramid_pgstore.records import storage_key
from pyramid_pgstore.schema import VERSION, create_sql, locked
from pyramid_pgstore.sql import ENDED_GRACE_SECONDS, Statements

# -- the variants do what the plain statements do ------------------------------

# Rows in every state the statements tell apart, as (key, data, userid,
# lifetime, created, modified, expires): times in seconds from "now" (None:
# never expires).
ROWS = [
    ("live", '{"n": 1}', "u1", None, -600, -60, 1200),
    ("old", '{"n": 2}', "u1", 900.0, -7200, -60, 1200),  # past a one-hour max_lifetime
    ("expired", '{"n": 3}', "u1", 900.0, -3600, -1800, -1),
    ("expiring", '{"n": 5}', "u1", None, -3600, -1800, 0),  # expires this very moment
    ("ended_now", "", None, None, -600, -10, -10),  # ended within ENDED_GRACE
    ("ended_long", "", None, None, -600, -2 * ENDED_GRACE_SECONDS, -2 * ENDED_GRACE_SECONDS),
    ("forever", '{"n": 4}', "u2", None, -600, -60, None),
]
KEYS = [row[0] for row in ROWS] + ["unknown"]
HOUR = "3600.000000 seconds"
ROW_PARAMS = {"userid": "u3", "ip": "192.0.2.1", "ua": "test", "lifetime": None}


# The forms of a write to a row a request read (sql.Guarded): the version
# as read ("as read" of the row in the table at hand), or none.
GUARDED = {"as_read": "as read", "as_read_live": "as read", "live": None}


def cases():
    """{statement name: [(index in its family or None, form of a guarded
    write or None, params)]} for every statement a request or cleanup runs,
    on every kind of row."""
    found = {}
    for family in ("touch", "replace", "renew", "succeed"):
        for position, ttl in ((0, HOUR), (1, None)):
            for key in KEYS:
                for cap in (None, HOUR):
                    params = {**ROW_PARAMS, "ttl": ttl, "cap": cap, "data": '{"n": 9}'}
                    if family == "succeed":
                        params.update(old_key=key, key="fresh")
                    else:
                        params.update(key=key, new_key="fresh")
                    if family in ("replace", "renew"):
                        for form, version in GUARDED.items():
                            found.setdefault(family, []).append(
                                (position, form, {**params, "version": version})
                            )
                    else:
                        found.setdefault(family, []).append((position, None, params))
    for key in KEYS:
        for form, version in GUARDED.items():
            params = {**ROW_PARAMS, "key": key, "data": "{}", "version": version}
            found.setdefault("replace_data", []).append((None, form, params))
        found.setdefault("end", []).append((None, None, {"key": key, "version": None}))
        found.setdefault("delete", []).append((None, None, {"key": key}))
        found.setdefault("load", []).append((None, None, {"key": key}))
        found.setdefault("delete_session_of", []).append((None, None, {"key": key, "userid": "u1"}))
    found["delete_sessions_of"] = [(None, None, {"userid": "u1", "keep": keep}) for keep in ("", "live")]
    found["delete_sessions_beyond"] = [(None, None, {"userid": "u1", "most": most}) for most in (0, 1)]
    found["sessions_of"] = [(None, None, {"userid": "u1"})]
    found["count_expired"] = [(None, None, {})]
    found["delete_expired_batch"] = [(None, None, {"limit": 100})]
    return found


CASES = cases()
# The moments "now" is put at: the database's own, and (in New York's time
# zone) a minute before its clocks go forward, so that every lifetime and
# max_lifetime crosses the hour that day does not have there.
CLOCKS = {
    "now-UTC": ("UTC", "now()"),
    "before-DST-New-York": ("America/New_York", "'2027-03-14 06:59:00+00'::timestamptz"),
}


@pytest.fixture
def tables(pgstore_dsn):
    """Two empty tables of the store's layout, dropped after the test."""
    names = ["equal_plain", "equal_distributed"]
    for name in names:
        sql(pgstore_dsn, locked(create_sql(name)), {"table": f'"{name}"'})
    yield names
    sql(pgstore_dsn, "DROP TABLE equal_plain, equal_distributed")


@pytest.mark.parametrize("clock", list(CLOCKS))
@pytest.mark.parametrize("name", list(CASES))
def test_the_statements_for_citus_do_what_the_plain_ones_do(pgstore_dsn, tables, clock, name):
    """Each statement, on each kind of row, with and without a lifetime and
    a max_lifetime: the same result and the same rows after it."""
    timezone, moment = CLOCKS[clock]
    conn = psycopg2.connect(pgstore_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET TIME ZONE '{timezone}'")
            cur.execute(f"SELECT {moment} - now()")
            (shift,) = cur.fetchone()
            now = f"(now() + interval '{shift.total_seconds():.6f} seconds')"
            for position, form, params in CASES[name]:
                # One transaction per case: now() is one moment for both tables.
                outcomes = [
                    outcome(cur, table, now, distributed, name, position, form, params)
                    for table, distributed in zip(tables, (False, True), strict=True)
                ]
                assert outcomes[1] == outcomes[0], (position, form, params)
                conn.rollback()
    finally:
        conn.close()


def outcome(cur, table, now, distributed, name, position, form, params):
    """What ``name`` (in its ``position`` in a family, its ``form`` of a
    guarded write) returns and leaves in ``table`` filled with ROWS."""
    for key, data, userid, lifetime, *times in ROWS:
        created, modified, expires = (
            "'infinity'" if seconds is None else f"{now} + interval '{seconds} seconds'" for seconds in times
        )
        cur.execute(
            f'INSERT INTO "{table}" (key, data, userid, lifetime, created_on, modified_on, expires_on)'
            f" VALUES (%s, %s, %s, %s, {created}, {modified}, {expires})",
            (key, data, userid, lifetime),
        )
    statement = getattr(Statements(table, now=now, distributed=distributed), name)
    statement = statement if position is None else statement[position]
    statement = statement if form is None else getattr(statement, form)
    if params.get("version") == "as read":  # the row's version in this table
        cur.execute(f'SELECT xmin FROM "{table}" WHERE key = %(key)s', params)
        found = cur.fetchone()
        params = {**params, "version": found[0] if found else None}
    cur.execute(statement, params)
    result = cur.fetchall() if cur.description else None
    rowcount = cur.rowcount
    cur.execute(f'SELECT *, xmin FROM "{table}" ORDER BY key')
    return rowcount, result, cur.fetchall()


# -- a refusal reaches the app as the store's own error ------------------------


def test_a_statement_the_database_does_not_support_raises_unsupported_statement(pgstore_dsn):
    if has_citus(pgstore_dsn):
        pytest.skip("Citus refuses triggers on a distributed table; see the Citus tests below")
    sql(
        pgstore_dsn,
        "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'not here' USING ERRCODE = 'feature_not_supported'; END $$",
    )
    with PGStore(pgstore_dsn, table="refusing_sessions") as store:
        sql(pgstore_dsn, "CREATE TRIGGER refuse BEFORE UPDATE ON refusing_sessions EXECUTE FUNCTION refuse()")
        try:
            add_row(pgstore_dsn, "id-1", table="refusing_sessions")
            with pytest.raises(UnsupportedStatement, match="not here"):
                store.touch("id-1", 60)
            assert store.lookup("id-1").record.data == {"n": 1}
        finally:
            sql(pgstore_dsn, "DROP TABLE refusing_sessions; DROP FUNCTION refuse()")


# -- on a Citus cluster only ------------------------------------------------------


def has_citus(dsn):
    return sql(dsn, "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")[0][0]


@pytest.fixture
def on_citus(pgstore_store, pgstore_dsn):
    """The test database's sessions table, distributed (else the test is skipped)."""
    if not pgstore_store.table_state().distributed:
        pytest.skip("needs a Citus cluster: pytest --pgstore-dsn <coordinator> --pgstore-citus")
    return pgstore_dsn


def add_row(dsn, session_id, table="http_sessions"):
    sql(
        dsn,
        f"INSERT INTO {table} (key, data, created_on, modified_on, expires_on)"
        " VALUES (%s, '{\"n\": 1}', now(), now(), now() + interval '1 hour')",
        (storage_key(session_id),),
    )


def test_the_store_finds_its_table_distributed_and_uses_the_statements_citus_accepts(on_citus):
    with PGStore(on_citus, create_table=False) as store:  # looks at the table on first use
        add_row(on_citus, "id-1")
        assert store.touch("id-1", 7200, cap=3600) is True  # plain: a stable function of a column
        assert store.table_state().distributed


def test_a_store_started_before_its_table_was_distributed_fails_with_the_stores_error(on_citus):
    with PGStore(on_citus, distributed=False) as store:  # the statements for plain PostgreSQL
        add_row(on_citus, "id-1")
        with pytest.raises(UnsupportedStatement, match="restart") as refused:
            store.touch("id-1", 7200)
        assert isinstance(refused.value.__cause__, psycopg2.errors.FeatureNotSupported)
        assert store.lookup("id-1").record.data == {"n": 1}


def test_a_distributed_table_of_schema_1_is_upgraded_in_place(on_citus):
    sql(on_citus, "DROP TABLE http_sessions")
    try:
        sql(
            on_citus,
            "CREATE TABLE http_sessions (key text PRIMARY KEY, data text NOT NULL, created_on timestamptz"
            " NOT NULL, modified_on timestamptz NOT NULL, expires_on timestamptz NOT NULL)",
        )
        sql(on_citus, "CREATE INDEX http_sessions_expires_on_idx ON http_sessions (expires_on)")
        sql(on_citus, "SELECT create_distributed_table('http_sessions', 'key')")
        add_row(on_citus, "id-1")
        with PGStore(on_citus) as store:  # Citus refuses DDL sent several statements to a query
            assert store.table_state().version == VERSION
            assert store.lookup("id-1").record.data == {"n": 1}
            assert store.touch("id-1", 60, user_agent="x") is True
    finally:
        sql(on_citus, "DROP TABLE IF EXISTS http_sessions")
        PGStore(on_citus).close()  # the current table again, distributed, for the tests after this one


def test_stats_count_the_shards_not_the_coordinators_empty_table(on_citus, pgstore_store):
    sql(
        on_citus,
        "INSERT INTO http_sessions (key, data, created_on, modified_on, expires_on)"
        " SELECT md5(n::text), repeat('x', 500), now(), now(), now() + interval '1 hour'"
        " FROM generate_series(1, 2000) AS n",
    )
    stats = pgstore_store.table_stats()
    shell = sql(on_citus, "SELECT pg_table_size('http_sessions')")[0][0]
    assert stats["live"] == 2000
    assert stats["table_bytes"] > 2000 * 500 > shell
    assert (
        stats["index_bytes"]
        == sql(
            on_citus, "SELECT citus_total_relation_size('http_sessions') - citus_table_size('http_sessions')"
        )[0][0]
    )
