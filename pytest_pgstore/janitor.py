"""What ``pgstore_dsn`` empties before each test: every table, or only the session tables.

Emptying tables in one round trip (about a millisecond) is what makes a
database per test unnecessary (tens of milliseconds each); the tables stay,
so a store's CREATE TABLE is paid once.
"""

from __future__ import annotations

from typing import Any

# Every table of the database.
_EMPTY_ALL_TABLES = """
DO $$
DECLARE tables text;
BEGIN
  SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') INTO tables
    FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema');
  IF tables IS NOT NULL THEN
    EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY CASCADE';
  END IF;
END $$
"""


# Empties only the tables pyramid_pgstore made: those with its comment
# (schema 2 on), or with its first layout's exact columns.
_EMPTY_SESSION_TABLES = """
DO $$
DECLARE tables text;
BEGIN
  SELECT string_agg(c.oid::regclass::text, ', ') INTO tables
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND (obj_description(c.oid, 'pg_class') LIKE 'pyramid_pgstore schema %'
           OR ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0
                    AND NOT attisdropped ORDER BY attnum)
              = ARRAY['key', 'data', 'created_on', 'modified_on', 'expires_on']);
  IF tables IS NOT NULL THEN
    EXECUTE 'TRUNCATE ' || tables;
  END IF;
END $$
"""


def empty(conn: Any, what: str) -> str | None:
    """Empty ``what`` ("all" or "sessions") on the janitor's connection;
    return what went wrong, for the test's failure, or None."""
    import psycopg2.errors

    try:
        with conn.cursor() as cur:
            cur.execute(_EMPTY_ALL_TABLES if what == "all" else _EMPTY_SESSION_TABLES)
    except psycopg2.errors.LockNotAvailable:
        return (
            "could not empty the test database: a transaction still open holds a lock on one of "
            "its tables (a fixture that used your app's database session before pgstore_dsn, "
            "say); ask for pgstore_dsn first, or empty only the session tables with "
            "--pgstore-empty=sessions (ini: pgstore_empty = sessions)"
        )
    return None
