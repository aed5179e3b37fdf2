"""The sessions table's layout, its versions, and the SQL that creates or upgrades it.

The version is kept in the table's comment (``pyramid_pgstore schema 2``),
so a later release can tell what it finds. Upgrades are additive only (new
nullable columns, new indexes): rows and live sessions are kept, and a
process of the previous release keeps working on an upgraded table.

=======  ================================================================
version  layout
=======  ================================================================
1        ``key``, ``data``, ``created_on``, ``modified_on``,
         ``expires_on``; an index on ``expires_on`` (no comment)
2        adds ``userid``, ``ip``, ``user_agent``, ``last_seen``, and a
         partial hash index on ``userid`` (only rows that have one; a hash
         index has no size limit on the value, unlike a B-tree's 2,704 bytes)
3        adds ``lifetime`` (``double precision``): the session's own idle
         timeout in seconds (``set_expiry()``; 0: the factory's, with a
         browser-session cookie; NULL: the factory's)
=======  ================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import SchemaOutdated
from .executor import Runner, nothing, one, scalar
from .sql import quoted_table

log = logging.getLogger("pyramid_pgstore")

VERSION = 3
COMMENT = f"pyramid_pgstore schema {VERSION}"
_COMMENT_PREFIX = "pyramid_pgstore schema "
_V1_COLUMNS = frozenset({"key", "data", "created_on", "modified_on", "expires_on"})
_V2_COLUMNS = _V1_COLUMNS | {"userid", "ip", "user_agent", "last_seen"}
_V3_COLUMNS = _V2_COLUMNS | {"lifetime"}

# What the store learns about its table in one query (see TableState).
INSPECT = (
    "SELECT c.oid IS NOT NULL, obj_description(c.oid, 'pg_class'),"
    " ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0"
    " AND NOT attisdropped),"
    " EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"
    " FROM (SELECT to_regclass(%(table)s) AS oid) AS c"
)
# Whether Citus manages the table (distributed, reference or Citus-local):
# asked only where the citus extension exists, which makes this catalog.
MANAGED_BY_CITUS = "SELECT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = %(table)s::regclass)"


@dataclass(frozen=True)
class TableState:
    """What is in the database under the table's name."""

    exists: bool
    comment: str | None
    columns: frozenset[str]
    citus: bool = False  # the database has the citus extension
    distributed: bool = False  # Citus manages the table (docs/scaling.rst, "Sharding on Citus")

    @property
    def version(self) -> int | None:
        """The layout's version; None if there is no table, or one we do not know."""
        if not self.exists:
            return None
        if self.comment and self.comment.startswith(_COMMENT_PREFIX):
            number = self.comment[len(_COMMENT_PREFIX) :].split()[0]
            return int(number) if number.isdigit() else None
        if self.columns >= _V3_COLUMNS:
            return 3  # made from the SQL or the SQLAlchemy table without its comment
        if self.columns >= _V2_COLUMNS:
            return 2
        if self.columns >= _V1_COLUMNS:
            return 1
        return None


def names(table: str) -> tuple[str, str, str]:
    """The quoted table and the quoted names of its two indexes."""
    quoted, expires_index = quoted_table(table)
    short = table.split(".")[-1][:50]
    return quoted, expires_index, f'"{short}_userid_idx"'


def create_sql(table: str) -> list[str]:
    """The statements that create the table at the current version."""
    t, expires_index, userid_index = names(table)
    return [
        f"CREATE TABLE IF NOT EXISTS {t} ("
        " key text PRIMARY KEY,"
        " data text NOT NULL,"
        " created_on timestamptz NOT NULL,"
        " modified_on timestamptz NOT NULL,"
        " expires_on timestamptz NOT NULL,"
        " userid text,"
        " ip text,"
        " user_agent text,"
        " last_seen timestamptz,"
        " lifetime double precision)",
        f"CREATE INDEX IF NOT EXISTS {expires_index} ON {t} (expires_on)",
        f"CREATE INDEX IF NOT EXISTS {userid_index} ON {t} USING hash (userid) WHERE userid IS NOT NULL",
        f"COMMENT ON TABLE {t} IS '{COMMENT}'",
    ]


def upgrade_sql(table: str, version: int) -> list[str]:
    """The statements that bring a table at ``version`` to the current one.

    ``ADD COLUMN`` of a nullable column without a default changes only the
    catalog; the partial index on a column that is still empty everywhere is
    one scan of the table.
    """
    if version == VERSION:
        return []
    if version not in (1, 2):
        raise ValueError(f"no upgrade from schema version {version} to {VERSION}")
    t, _, userid_index = names(table)
    statements = []
    if version == 1:
        statements += [
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS userid text, ADD COLUMN IF NOT EXISTS ip text,"
            " ADD COLUMN IF NOT EXISTS user_agent text, ADD COLUMN IF NOT EXISTS last_seen timestamptz",
            f"CREATE INDEX IF NOT EXISTS {userid_index} ON {t} USING hash (userid) WHERE userid IS NOT NULL",
        ]
    statements += [
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS lifetime double precision",
        f"COMMENT ON TABLE {t} IS '{COMMENT}'",
    ]
    return statements


def needed_sql(table: str, state: TableState) -> list[str]:
    """What to run for the table as it is: nothing when it is current.

    :raises ValueError: the table is of a layout this release cannot upgrade.
    """
    if not state.exists:
        return create_sql(table)
    if state.version is None:
        raise ValueError(
            f"table {table} exists but is not a pyramid_pgstore sessions table "
            f"(columns: {', '.join(sorted(state.columns))})"
        )
    if state.version > VERSION:
        raise ValueError(
            f"table {table} is at pyramid_pgstore schema {state.version}, newer than this "
            f"release's ({VERSION}): upgrade pyramid_pgstore"
        )
    return upgrade_sql(table, state.version)


def locked(statements: list[str], citus: bool = False) -> str:
    """``statements`` as one transaction (one query string) under the
    table's schema lock (``%(table)s``: the quoted table name, the key every
    release has used): two processes starting at once do not collide, and a
    failure leaves no transaction open. A lock held by live traffic is waited
    for at most 10 s, so a busy table fails the start instead of queueing
    every request behind the ALTER.

    ``citus``: for a database with Citus, which sends a DDL statement on a
    table it manages to the shards as the text of the query that carried it,
    and refuses a text of several statements: each runs alone, by
    ``EXECUTE`` in one ``DO`` block (still one transaction and one round
    trip), whether Citus manages the table yet or not (another process may
    distribute it while this one waits for the lock)."""
    if not citus:
        head = "SELECT pg_advisory_xact_lock(hashtext(%(table)s)); SET LOCAL lock_timeout = '10s'; "
        return head + "; ".join(statements)
    each = "".join(f"EXECUTE {_literal(statement)}; " for statement in statements)
    return (
        "DO $pgstore$ BEGIN PERFORM pg_advisory_xact_lock(hashtext(%(table)s));"
        f" PERFORM set_config('lock_timeout', '10s', true); {each}END $pgstore$"
    )


def _literal(statement: str) -> str:
    """Our own DDL as an SQL string literal (it holds no ``$pgstore$``)."""
    return "'" + statement.replace("'", "''") + "'"


def inspect(executor: Runner, quoted: str) -> TableState:
    """What is in the database under the (quoted) table name: one statement,
    and a second where the citus extension exists and the table too."""
    found = executor.run(INSPECT, {"table": quoted}, one, watched=False)
    exists, comment, columns, citus = found or (False, None, (), False)
    distributed = bool(exists and citus and executor.run(MANAGED_BY_CITUS, {"table": quoted}, scalar))
    return TableState(exists, comment, frozenset(columns or ()), citus, distributed)


def prepare(executor: Runner, table: str, quoted: str) -> tuple[list[str], TableState]:
    """Create the table, or upgrade it to the current layout; return the
    statements run (none when it was current, and then nothing beyond
    reading the catalog is needed: no CREATE or ALTER privilege), and the
    table's state as found (creating or upgrading never changes whether
    Citus manages it).

    :raises SchemaOutdated: the table is of a layout this release cannot upgrade.
    """
    state = inspect(executor, quoted)
    needed = _needed(table, state)
    if needed:
        # An upgrade builds an index in one scan of the table: no commit_timeout.
        executor.run(locked(needed, state.citus), {"table": quoted}, nothing, watched=False)
        log.info("table %s: %s", table, "; ".join(needed))
    return needed, state


def check(executor: Runner, table: str, quoted: str) -> TableState:
    """The table's state, if it is current.

    :raises SchemaOutdated: the table is missing or needs upgrading.
    """
    state = inspect(executor, quoted)
    if not state.exists:
        raise SchemaOutdated(table, f'relation "{table}" does not exist')
    if _needed(table, state):
        problem = f"table {table} has the layout of pyramid_pgstore schema {state.version}, not {VERSION}"
        raise SchemaOutdated(table, problem)
    return state


def _needed(table: str, state: TableState) -> list[str]:
    try:
        return needed_sql(table, state)
    except ValueError as exc:
        raise SchemaOutdated(table, str(exc)) from None
