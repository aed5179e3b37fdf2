"""The test databases: the run's own (pytest-postgresql's janitor), and what
``pgstore_dsn`` empties before each test (every table, or only the session tables).

:class:`RunDatabase` is pytest-postgresql's ``DatabaseJanitor`` for the
database of a run (or of one xdist worker): created when the first test asks
for it, dropped, its connections ended first, at the end.

Between tests the tables are emptied, not the database cloned: pytest-postgresql's
way, a database created from a template for each test and dropped after it
(``DatabaseJanitor(template_dbname=...)`` ``init()`` and ``drop()``), took
123 to 444 ms a test (medians of 50, on this project's shared 2-core
machine) where :func:`empty` took 8 ms (the session table alone) to 36 ms
(six tables, all emptied); and the tables stay, so a store's CREATE TABLE is
paid once. ``bench/plugin_overhead.py`` measures both in whole suites.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pytest_postgresql.janitor import DatabaseJanitor

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


class RunDatabase(DatabaseJanitor):
    """pytest-postgresql's janitor for database ``dbname`` on the server that
    ``admin_dsn`` (a DSN of a database there, ``postgres`` for the throwaway
    server) reaches: ``init()`` creates it, ``drop()`` ends its connections
    and drops it; one statement and one connection each.

    It connects with the whole ``admin_dsn``, not only the user, password,
    host and port that the janitor's own connection takes (a given server's
    ``sslmode`` or ``passfile`` would be lost), and fails at once, without the
    janitor's minute of retries, when the server cannot be reached.
    """

    def __init__(self, admin_dsn: str, dbname: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(admin_dsn)
        super().__init__(
            user=str(params.get("user", "")),
            host=str(params.get("host", "")),
            port=str(params.get("port", "")),
            dbname=dbname,
            maintenance_dbname=str(params.get("dbname", "postgres")),
            password=str(params["password"]) if "password" in params else None,
        )
        self.admin_dsn = admin_dsn

    @contextmanager
    def cursor(self, dbname: str | None = None) -> Iterator[Any]:
        """A cursor on ``dbname`` (default: the admin DSN's database), autocommit."""
        import psycopg
        from psycopg.conninfo import make_conninfo

        conninfo = make_conninfo(self.admin_dsn, **({"dbname": dbname} if dbname else {}))
        with psycopg.connect(conninfo, autocommit=True, application_name="pytest_pgstore") as conn:
            with conn.cursor() as cur:
                yield cur
