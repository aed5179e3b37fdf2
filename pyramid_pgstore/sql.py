"""Every SQL statement the store runs, for one table, in one place.

Identifiers are validated and double-quoted here and nowhere else; values
always travel as parameters (``%(name)s``). The store (store.py) decides
which statement to run; this module only writes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from ._prepared import Prepared
from .limits import MAX_SECONDS

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
    if not 0 <= ttl <= MAX_SECONDS:
        raise ValueError(f"ttl must be between 0 and {MAX_SECONDS} seconds (10 years) or None, got {ttl!r}")
    return f"{ttl:.6f} seconds"


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# A session ended by a request (invalidate(), a new id) stays as a row with
# no data for this long, so that requests already in flight with its cookie
# see "ended" rather than "unknown", and leave the cookie alone.
ENDED_GRACE_SECONDS = 60
ENDED_GRACE = f"{ENDED_GRACE_SECONDS} seconds"


def _just_ended(now: str, row: str = "") -> str:
    """True for a session ended less than :data:`ENDED_GRACE` ago."""
    return f"{row}data = '' AND {row}modified_on + interval '{ENDED_GRACE}' > {now}"


def _utc(timestamp: str) -> str:
    """``timestamp`` (a timestamptz) as UTC wall-clock time: an immutable
    function, where adding an interval to a timestamptz is only stable."""
    return f"({timestamp} AT TIME ZONE 'UTC')"


def _plus(timestamp: str, interval: str) -> str:
    """``timestamp + interval`` (a timestamptz) with immutable functions only,
    for Citus, which refuses a stable function of a column in a write. Equal
    to ``+`` for the intervals the store uses, which are in seconds (no days
    or months, the parts whose length depends on the time zone)."""
    return f"({_utc(timestamp)} + {interval}) AT TIME ZONE 'UTC'"


# Every parameter's type, for statements that run on a connection of the
# app's (typed below).
PARAMETER_TYPES = {
    **dict.fromkeys(("key", "new_key", "old_key", "keep", "data", "userid", "ip", "ua", "version"), "text"),
    **dict.fromkeys(("ttl", "cap"), "interval"),
    "table": "text",  # the quoted name, as text (cast to regclass where the statement says so)
    "lifetime": "float8",
    **dict.fromkeys(("limit", "most"), "integer"),
}
_UNTYPED_PARAMETER = re.compile(r"%\((\w+)\)s(?!::)")


def typed(sql: str) -> str:
    """``sql`` with every parameter that has no cast given one from
    :data:`PARAMETER_TYPES` (``%(key)s::text``).

    psycopg2 writes the values into the statement's text, where PostgreSQL
    sees literals; psycopg 3 sends them apart (``$1``), and PostgreSQL must
    then infer each one's type from the statement, which it cannot from
    ``%(version)s IS NULL`` (``could not determine data type of parameter``).
    With a cast on each, the statement means the same on both drivers.

    :raises KeyError: a parameter :data:`PARAMETER_TYPES` does not know.
    """

    def cast(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in PARAMETER_TYPES:
            raise KeyError(f"no type for the parameter %({name})s: add it to sql.PARAMETER_TYPES")
        return f"{match.group(0)}::{PARAMETER_TYPES[name]}"

    return _UNTYPED_PARAMETER.sub(cast, sql)


class Guarded(NamedTuple):
    """A write to the row a request read, in the three forms of its WHERE
    clause (beside the key):

    ``as_read``: the row is as the request read it (``%(version)s``, its
    ``xmin``), and nothing more: live when read, it cannot have expired
    since (the store knows how long it had left, :meth:`PGStore.write`);
    ``as_read_live``: the same, if it is still live;
    ``live``: whatever the row holds, if it is live (there is no version to
    compare: the last of a storm of merged writes, or a request's second).
    """

    as_read: Statement
    as_read_live: Statement
    live: Statement

    def pick(self, version: str | None, surely_live: bool) -> Statement:
        """The form for a write with this version (None: none to compare)."""
        if version is None:
            return self.live
        return self.as_read if surely_live else self.as_read_live


def _counterpart(statement: Statement, mine: Any, theirs: Any) -> Statement | None:
    """Where ``statement`` is ``mine`` or inside it (a tuple, nested), what
    is at the same place in ``theirs``; else None."""
    if mine is statement:
        return theirs  # type: ignore[no-any-return]
    if isinstance(mine, tuple):
        for position, each in enumerate(mine):
            found = _counterpart(statement, each, theirs[position])
            if found is not None:
                return found
    return None


def _typed_all(value: Any) -> Any:
    """A statement, or a tuple of them (nested, or a :class:`Guarded`),
    each typed (:func:`typed`); anything else as it is."""
    if isinstance(value, str):
        return typed(value)
    if isinstance(value, tuple):
        items = [_typed_all(each) for each in value]
        return Guarded(*items) if isinstance(value, Guarded) else tuple(items)
    return value


class Statements:
    """The SQL text for one table, built once.

    ``now`` is the database clock: plain ``now()`` in production, and now
    plus an offset written into the text (:meth:`shifted`) only in a store
    whose clock a test has moved, so production statements carry no
    test-only arithmetic and take no test-only parameter.
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

    Each write family is a pair: ``(with a lifetime, forever)``.

    ``distributed=True`` writes the statements for a table managed by Citus
    (docs/scaling.rst, "Sharding on Citus"), which refuses a stable function
    applied to a column in an ``UPDATE`` or ``DELETE`` (``expires_on + interval``),
    anything but immutable values in ``ON CONFLICT ... DO UPDATE``
    (``now()``), and ``FOR UPDATE`` across shards. There, comparisons put the
    interval on the side of ``now()``, which Citus evaluates once, on the
    coordinator, before it routes the statement to the shard of its key;
    ``ON CONFLICT`` takes its "now" from the row it tried to insert
    (``EXCLUDED``); a column plus an interval is computed in UTC wall-clock
    time (:func:`_plus`); cleanup finds its batch by key. The same
    statements run on plain PostgreSQL, a little slower to plan; the plain
    ones are unchanged.

    ``typed=True`` casts every parameter to its type (:func:`typed`): for the
    statements run in the app's transaction (``pgstore.transaction =
    shared``), on whatever driver its SQLAlchemy session uses, psycopg 3
    included. The store's own statements, always on psycopg2, go without.

    A write of data names the version it read (``%(version)s``, the row's
    ``xmin``): it changes the row only if no other request wrote it since,
    else the store merges and tries again. Such a write comes in the three
    forms of a :class:`Guarded`: the row was live when read and nobody ended
    it since (ending a session writes its row), so unless it may have
    expired meanwhile the version is all the WHERE clause checks (a liveness
    test there cost the server 45k instructions a write, a sixth of the
    UPDATE, bench/counts.py). An ended session is a row with empty ``data``
    that has expired at the moment it ended; cleanup leaves it for
    :data:`ENDED_GRACE`.
    """

    def __init__(
        self,
        table: str,
        synchronous_commit: bool = True,
        statement_timeout: float | None = None,
        now: str = "now()",
        prepare: bool = False,
        distributed: bool = False,
        typed: bool = False,
    ) -> None:
        t, _ = quoted_table(table)
        self._prepare = prepare
        self._typed = typed
        self._settings = (table, synchronous_commit, statement_timeout)
        self.quoted_table = t
        self.distributed = distributed
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
        self._limit, self._write, self._now = limit, write, now
        live = f"expires_on + interval '0 s' > {now}"
        unchanged = "(%(version)s IS NULL OR xmin = %(version)s::xid)"
        columns = (
            "key, data, userid, ip, user_agent, lifetime, created_on, modified_on, last_seen, expires_on"
        )
        # A new row's owner, client, own lifetime (set_expiry; NULL: the factory's) and times.
        fresh = f"%(userid)s, %(ip)s, %(ua)s, %(lifetime)s::float8, {now}, {now}, {now}"
        ended = (
            "data = '', userid = NULL, ip = NULL, user_agent = NULL, lifetime = NULL,"
            f" modified_on = {now}, expires_on = {now}"
        )
        # succeed's ON CONFLICT: the dead row is ended, unless it just was.
        dead = f"(s.expires_on + interval '0 s' <= {now} OR s.created_on + %(cap)s::interval <= {now})"
        end_dead, just_ended = ended, _just_ended(now, "s.")
        # An existing row's new expiry never passes its created_on +
        # max_lifetime (%(cap)s; NULL: no cap, which LEAST ignores).
        capped = "LEAST({expires}, created_on + %(cap)s::interval)"
        if distributed:  # see the class docstring
            live = f"expires_on > {now}"
            # The row succeed tried to insert for the dead key holds its "now".
            inserted_at = _utc("EXCLUDED.modified_on")
            past_cap = f"{_utc('s.created_on')} + %(cap)s::interval <= {inserted_at}"
            dead = f"(s.expires_on <= EXCLUDED.modified_on OR {past_cap})"
            end_dead = (
                "data = '', userid = NULL, ip = NULL, user_agent = NULL, lifetime = NULL,"
                " modified_on = EXCLUDED.modified_on, expires_on = EXCLUDED.expires_on"
            )
            just_ended = f"s.data = '' AND {_utc('s.modified_on')} + interval '{ENDED_GRACE}' > {inserted_at}"
            capped = "LEAST({expires}, " + _plus("created_on", "%(cap)s::interval") + ")"
        self._live = live  # for the guarded writes (_guarded)

        # Also returns an expired or ended row: PGStore.lookup tells them apart.
        self.load = self._statement(
            "load",
            limit,
            f"SELECT data, created_on, modified_on, expires_on, {now}, xmin, lifetime"
            f" FROM {t} WHERE key = %(key)s",
        )
        # Insert or replace, one statement whether the row exists or not. A
        # row that had expired starts over with a new created_on.
        self.save = self._family(
            "save",
            lambda expires: (
                f"INSERT INTO {t} AS s ({columns}) VALUES (%(key)s, %(data)s, {fresh}, {expires})"
                " ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, userid = EXCLUDED.userid,"
                " ip = EXCLUDED.ip, user_agent = EXCLUDED.user_agent, lifetime = EXCLUDED.lifetime,"
                " modified_on = EXCLUDED.modified_on,"
                " last_seen = EXCLUDED.last_seen, expires_on = EXCLUDED.expires_on,"
                " created_on = CASE WHEN s.expires_on > EXCLUDED.modified_on"
                " THEN s.created_on ELSE EXCLUDED.created_on END"
            ),
        )

        # Only the row as read (or, without a version, a live row) is
        # written: a session another request ended (a logout) stays gone.
        def replace(set_expiry: str) -> Callable[[str], str]:
            return lambda row: (
                f"UPDATE {t} SET data = %(data)s, userid = %(userid)s, ip = %(ip)s, user_agent = %(ua)s,"
                f" lifetime = %(lifetime)s::float8, modified_on = {now}, last_seen = {now}{set_expiry}"
                f" WHERE key = %(key)s AND {row}"
            )

        self.replace = self._guarded_family(
            "replace", lambda expires: replace(", expires_on = " + capped.format(expires=expires))
        )
        # The same, the expiry left as it is (refreshed at most every
        # reissue_time, as for reads): with no indexed column changed, the new
        # row version is a HOT update, written beside the old one with no
        # index entry: 10 % cheaper, and the table and its indexes stop
        # bloating (bench/README.rst, "Hot path").
        self.replace_data = self._guarded("replace_data", replace(""))
        self.touch = self._family(
            "touch",
            lambda expires: (
                f"UPDATE {t} SET expires_on = {capped.format(expires=expires)}, last_seen = {now},"
                f" ip = %(ip)s, user_agent = %(ua)s WHERE key = %(key)s AND {live}"
            ),
        )

        # A new id for a live session, in one statement: the old row is ended
        # (only if unchanged since read) and the new one holds the data.
        self.renew = self._guarded_family(
            "renew",
            lambda expires: (
                lambda row: (
                    f"WITH old AS (UPDATE {t} SET {ended} WHERE key = %(key)s AND {row} RETURNING 1)"
                    f" INSERT INTO {t} ({columns}) SELECT %(new_key)s, %(data)s, {fresh}, {expires} FROM old"
                    " RETURNING xmin"
                )
            ),
        )
        # A new session for a browser whose cookie named a dead one: made only
        # if no other request did so first from the same dead cookie (which
        # then becomes an ended row), so two such requests never both set a
        # cookie. A dead row is an expired one, or past %(cap)s (max_lifetime).
        self.succeed = self._family(
            "succeed",
            lambda expires: (
                f"WITH dead AS (INSERT INTO {t} AS s (key, data, created_on, modified_on, expires_on)"
                f" VALUES (%(old_key)s, '', {now}, {now}, {now}) ON CONFLICT (key) DO UPDATE SET {end_dead}"
                f" WHERE {dead} AND NOT ({just_ended}) RETURNING 1)"
                f" INSERT INTO {t} ({columns}) SELECT %(key)s, %(data)s, {fresh}, {expires} FROM dead"
            ),
        )
        self.end = self._statement(
            "end", write, f"UPDATE {t} SET {ended} WHERE key = %(key)s AND data <> '' AND {unchanged}"
        )
        self.delete = self._statement("delete", write, f"DELETE FROM {t} WHERE key = %(key)s")
        # A user's sessions: the partial index on userid (rows that have one).
        seen = "coalesce(last_seen, modified_on)"  # rows from before last_seen existed have none
        self.sessions_of = (
            f"{limit}SELECT key, userid, created_on, {seen}, expires_on, ip, user_agent, lifetime FROM {t}"
            f" WHERE userid = %(userid)s AND {live} ORDER BY {seen} DESC, created_on DESC"
        )
        # Each returns the keys it deleted, for the SessionEnded events.
        self.delete_sessions_of = (
            f"{write}DELETE FROM {t} WHERE userid = %(userid)s AND {live} AND key <> %(keep)s RETURNING key"
        )
        self.delete_session_of = (
            f"{write}DELETE FROM {t} WHERE key = %(key)s AND userid = %(userid)s AND {live} RETURNING key"
        )
        # max_sessions_per_user: a user's live sessions beyond the %(most)s most
        # recently seen. Run after a login is stored (its own statement, on
        # rows every committed login has written), so simultaneous logins each
        # see the others' rows, and the last to run leaves no more than that.
        self.delete_sessions_beyond = (
            f"{write}DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE userid = %(userid)s AND {live}"
            f" ORDER BY {seen} DESC, created_on DESC OFFSET %(most)s) RETURNING key"
        )
        # What a cleanup pass would delete now (delete_expired_batch's rows).
        self.count_expired = (
            f"SELECT count(*) FROM {t} WHERE expires_on <= {now} AND NOT ({_just_ended(now)})"
        )
        sizes = "pg_table_size(%(table)s::regclass), pg_indexes_size(%(table)s::regclass)"
        if distributed:  # the coordinator's table is an empty shell: the sizes of its shards
            sizes = (
                "citus_table_size(%(table)s::regclass),"
                " citus_total_relation_size(%(table)s::regclass) - citus_table_size(%(table)s::regclass)"
            )
        self.table_stats = (
            f"SELECT count(*) FILTER (WHERE expires_on > {now}), count(*) FILTER (WHERE expires_on <= {now}),"
            f" count(*) FILTER (WHERE expires_on <= {now} AND {_just_ended(now)}), {sizes} FROM {t}"
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
        # five times faster than joining on key (bench/cleanup.py). Sessions
        # ended less than ENDED_GRACE ago are kept (see above).
        self.delete_expired_batch = (
            f"{limit}DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t}"
            f" WHERE expires_on <= {now} AND NOT ({_just_ended(now)})"
            " LIMIT %(limit)s FOR UPDATE SKIP LOCKED))"
        )
        if distributed:
            # A ctid is a place in one shard, and Citus locks no rows across
            # shards: the batch is found by key, and the DELETE checks each
            # row again (a request may have refreshed it since), waiting for
            # a row a request is writing rather than skipping it.
            just_ended = f"data = '' AND modified_on > {now} - interval '{ENDED_GRACE}'"
            expired = f"expires_on <= {now} AND NOT ({just_ended})"
            self.delete_expired_batch = (
                f"{limit}DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE {expired} LIMIT %(limit)s)"
                f" AND {expired}"
            )

        if typed:
            self._type_parameters()

    def shifted(self, offset: float) -> Statements:
        """The same statements with "now" ``offset`` seconds later (a test's
        clock), as text whatever ``prepare`` says, typed if these are."""
        now = f"(now() + interval '{float(offset):.6f} seconds')"
        return Statements(*self._settings, now=now, typed=self._typed, distributed=self.distributed)

    def counterpart(self, statement: Statement, other: Statements) -> Statement:
        """The statement of ``other`` that ``statement`` is among these (by
        identity, in a family or a :class:`Guarded` too); ``statement``
        itself if it is none of these."""
        if other is self:
            return statement
        for name, value in vars(self).items():
            found = _counterpart(statement, value, getattr(other, name, None))
            if found is not None:
                return found
        return statement

    def _type_parameters(self) -> None:
        """Give every parameter of every statement its type (:func:`typed`)."""
        for name, value in vars(self).items():
            if not name.startswith("_"):
                setattr(self, name, _typed_all(value))

    def _statement(self, kind: str, prefix: str, body: str) -> Statement:
        """A per-request statement: text, or prepared (see _prepared)."""
        return Prepared(kind, prefix, body, self._limit) if self._prepare else prefix + body

    def _guarded(self, kind: str, build: Callable[[str], str]) -> Guarded:
        """A write to a row a request read, in its three forms (``build``
        takes the WHERE clause's condition beside the key)."""
        as_read = "xmin = %(version)s::xid"
        return Guarded(
            self._statement(kind, self._write, build(as_read)),
            self._statement(kind + "_live", self._write, build(f"{as_read} AND {self._live}")),
            self._statement(kind + "_over", self._write, build(self._live)),
        )

    def _guarded_family(
        self, kind: str, build: Callable[[str], Callable[[str], str]]
    ) -> tuple[Guarded, Guarded]:
        """:meth:`_guarded`, with a lifetime (``%(ttl)s``) and forever."""
        return (
            self._guarded(kind, build(f"{self._now} + %(ttl)s::interval")),
            self._guarded(kind + "_forever", build("'infinity'::timestamptz")),
        )

    def _family(self, kind: str, build: Callable[[str], str]) -> tuple[Statement, Statement]:
        """A write, with a lifetime (``%(ttl)s``, interval text) and forever."""
        return (
            self._statement(kind, self._write, build(f"{self._now} + %(ttl)s::interval")),
            self._statement(kind + "_forever", self._write, build("'infinity'::timestamptz")),
        )
