"""A helper for tests that look at the database directly."""

import psycopg2


def sql(dsn, query, params=None):
    """Run one query on a connection of the test's own; return all rows (or [])."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
