"""Every SQL statement the store runs, for one table, in one place.

Identifiers are validated and double-quoted here and nowhere else; values
always travel as parameters (``%(name)s``). The store (store.py) decides
which statement to run; this module only writes them.
"""

from __future__ import annotations

import math
import re

from ._prepared import Prepared

# What runs a statement: its text, or a server-side prepared statement.
Statement = str | Prepared

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")


def check_table_name(table: str) -> None:
    """Refuse anything but ``name`` or ``schema.name`` of plain SQL identifiers,
    rather than quote it into a surprising name.

    :raises ValueError: saying what a table name may be.
    """
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ValueError(
            f"invalid table name {table!r}: use 'name' or 'schema.name', each part "
            "a letter or underscore followed by up to 62 letters, digits, _ or $"
        )


def quoted_table(table: str) -> tuple[str, str]:
    """The quoted table name and the quoted name of its expiry index."""
    check_table_name(table)
    parts = table.split(".")
    quoted = ".".join(f'"{part}"' for part in parts)
    index = f'"{parts[-1][:47]}_expires_on_idx"'
    return quoted, index


def interval(ttl: float | None) -> str | None:
    """A lifetime in seconds as PostgreSQL interval text (see :class:`Statements`)."""
    if ttl is None:
        return None
    try:
        finite = math.isfinite(ttl)
    except (TypeError, OverflowError):
        finite = False
    if not finite:
        raise ValueError(f"ttl must be a finite number of seconds or None, got {ttl!r}")
    return f"{ttl:.6f} seconds"


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Statements:
    """The SQL text for one table, built once.

    ``now`` is the database clock: plain ``now()`` in production, and
    ``SHIFTED_NOW`` (now plus the test clock's offset) only while a test has
    moved the clock, so production statements carry no test-only arithmetic.
    By default every statement is sent as text, so PostgreSQL parses and
    plans it on each execution (server-side prepared statements do not
    survive PgBouncer's transaction mode; ``prepare=True`` makes the
    per-request ones :class:`~pyramid_pgstore._prepared.Prepared`). The text
    is kept cheap to plan, each choice measured (bench/README.rst, "Hot
    path"):

    * a session's row is found by its key alone. ``expires_on > now()`` in a
      WHERE clause makes the planner estimate it from the expiry index on
      every execution (10-15 us); the load compares the two timestamps it
      reads instead, and writes compare ``expires_on + interval '0 s'``, an
      expression the planner does not estimate;
    * lifetimes are passed as interval text (``'3600.000000 seconds'``),
      not multiplied (``%(ttl)s * interval '1 second'``) or built with
      ``make_interval``, whose operator and function lookups run each time;
    * a session without expiry has statements of its own, with
      ``'infinity'``, rather than a ``COALESCE`` in every statement.
    """

    SHIFTED_NOW = "(now() + %(offset)s * interval '1 second')"

    def __init__(
        self,
        table: str,
        synchronous_commit: bool = True,
        statement_timeout: float | None = None,
        now: str = "now()",
        prepare: bool = False,
    ) -> None:
        t, index = quoted_table(table)
        self._prepare = prepare
        self.quoted_table = t
        # Settings for one statement's transaction only: several statements
        # in one query string run as one implicit transaction, so SET LOCAL
        # costs no round trip, never stays on the connection, and works
        # behind PgBouncer in transaction mode.
        limit = (
            ""
            if statement_timeout is None
            else f"SET LOCAL statement_timeout = {_milliseconds(statement_timeout)}; "
        )
        write = limit + ("" if synchronous_commit else "SET LOCAL synchronous_commit = off; ")
        self._limit = limit
        self.regclass = "SELECT to_regclass(%(table)s) IS NOT NULL"
        # One query string is one implicit transaction: the advisory lock
        # serializes processes creating the table at once, and a failure
        # leaves no transaction open on the connection.
        self.create = (
            "SELECT pg_advisory_xact_lock(hashtext(%(table)s));"
            f" CREATE TABLE IF NOT EXISTS {t} ("
            " key text PRIMARY KEY,"
            " data text NOT NULL,"
            " created_on timestamptz NOT NULL,"
            " modified_on timestamptz NOT NULL,"
            " expires_on timestamptz NOT NULL);"
            f" CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_on)"
        )
        # Also returns an expired row, not yet cleaned up: PGStore.load drops it.
        load = f"SELECT data, created_on, modified_on, expires_on, {now} FROM {t} WHERE key = %(key)s"
        self.load = self._statement("load", limit, load)
        # Writes with a lifetime (%(ttl)s, interval text), and without one.
        self.save, self.replace, self.touch = self._writes(t, write, now, f"{now} + %(ttl)s::interval", "")
        self.save_forever, self.replace_forever, self.touch_forever = self._writes(
            t, write, now, "'infinity'::timestamptz", "_forever"
        )
        self.delete = self._statement("delete", write, f"DELETE FROM {t} WHERE key = %(key)s")
        self.count_expired = f"SELECT count(*) FROM {t} WHERE expires_on <= {now}"
        self.table_stats = (
            f"SELECT count(*) FILTER (WHERE expires_on > {now}), count(*) FILTER (WHERE expires_on <= {now}),"
            " pg_table_size(%(table)s::regclass), pg_indexes_size(%(table)s::regclass)"
            f" FROM {t}"
        )
        # Taken in a transaction held open on a connection of its own for the
        # whole pass; holding it while idle must not get that session killed.
        self.cleanup_lock_setup = "SET LOCAL idle_in_transaction_session_timeout = 0"
        self.try_cleanup_lock = (
            "SELECT pg_try_advisory_xact_lock(hashtext('pyramid_pgstore cleanup ' || %(table)s))"
        )
        # Bounded batches: each is its own short transaction, and SKIP LOCKED
        # never waits for a row a live request is writing. Rows are found by
        # ctid, locked by this same statement so they cannot move under it:
        # five times faster than joining on key (bench/cleanup.py).
        self.delete_expired_batch = (
            f"{limit}DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t}"
            f" WHERE expires_on <= {now} LIMIT %(limit)s FOR UPDATE SKIP LOCKED))"
        )

    def _statement(self, kind: str, prefix: str, body: str) -> Statement:
        """A per-request statement: text, or prepared (see _prepared)."""
        return Prepared(kind, prefix, body, self._limit) if self._prepare else prefix + body

    def _writes(
        self, t: str, write: str, now: str, expires: str, suffix: str
    ) -> tuple[Statement, Statement, Statement]:
        """The save, replace and touch statements, for one expiry expression."""
        live = f"expires_on + interval '0 s' > {now}"
        # One statement whether the row exists or not. A row that had expired
        # (not yet cleaned up) starts over with a new created_on.
        save = (
            f"INSERT INTO {t} AS s (key, data, created_on, modified_on, expires_on)"
            f" VALUES (%(key)s, %(data)s, {now}, {now}, {expires})"
            " ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data,"
            " modified_on = EXCLUDED.modified_on, expires_on = EXCLUDED.expires_on,"
            " created_on = CASE WHEN s.expires_on > EXCLUDED.modified_on"
            " THEN s.created_on ELSE EXCLUDED.created_on END"
        )
        replace = (
            f"UPDATE {t} SET data = %(data)s, modified_on = {now}, expires_on = {expires}"
            f" WHERE key = %(key)s AND {live}"
        )
        touch = f"UPDATE {t} SET expires_on = {expires} WHERE key = %(key)s AND {live}"
        return (
            self._statement("save" + suffix, write, save),
            self._statement("replace" + suffix, write, replace),
            self._statement("touch" + suffix, write, touch),
        )
