"""Server-side prepared statements for the store's per-request statements.

A statement sent as text is parsed and planned by PostgreSQL on every
execution; for a primary-key lookup or update that is a third of the server's
work. ``PGStore(prepare_statements=True)`` prepares each per-request statement
once on each connection (``PREPARE``, one extra round trip the first time) and
then sends ``EXECUTE name(...)``, whose plan PostgreSQL keeps.

Prepared statements belong to a server connection, so they do not work
behind PgBouncer in transaction mode (a later ``EXECUTE`` may reach another
server connection): the option is off by default. A statement found missing
anyway (``DISCARD ALL``, ``DEALLOCATE`` by the owner of a borrowed pool), or
whose result type a migration changed, is prepared again and the execution
retried once.
"""

from __future__ import annotations

import hashlib
import re
import weakref

import psycopg2.errors
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from .errors import PGStoreError

# The SQL type of each named parameter the prepared statements take.
_PARAMETER_TYPES = {
    "key": "text",
    "data": "text",
    "ttl": "interval",
    "version": "text",
    "new_key": "text",
    "old_key": "text",
    "userid": "text",
    "ip": "text",
    "ua": "text",
    "cap": "interval",
    "lifetime": "float8",
}
_PARAMETER = re.compile(r"%\((\w+)\)s")


class Prepared:
    """One statement, as ``PREPARE`` and ``EXECUTE`` text.

    ``prefix`` (``SET LOCAL ...;``) runs in the same query string before the
    ``EXECUTE``, so it still applies to that statement's transaction only;
    ``limit`` (the statement timeout, if any) also before the ``PREPARE``,
    which waits for a lock on the table like the statement would.
    The name carries a hash of the text: stores of different tables, or
    versions, sharing a connection never use each other's statement.
    """

    __slots__ = ("execute", "name", "prepare")

    def __init__(self, kind: str, prefix: str, body: str, limit: str = "") -> None:
        names: list[str] = []
        for match in _PARAMETER.finditer(body):
            if match.group(1) not in names:
                names.append(match.group(1))
        numbered = _PARAMETER.sub(lambda match: f"${names.index(match.group(1)) + 1}", body)
        self.name = f"pgstore_{kind}_{hashlib.sha256(body.encode()).hexdigest()[:12]}"
        types = ", ".join(_PARAMETER_TYPES[name] for name in names)
        self.prepare = f"{limit}PREPARE {self.name} ({types}) AS {numbered}"
        arguments = ", ".join(f"%({name})s" for name in names)
        self.execute = f"{prefix}EXECUTE {self.name} ({arguments})"


class PreparedStatements:
    """Which statements each connection has prepared; executes through them.

    Connections are weakly referenced: one that is closed and collected is
    forgotten, and a replacement starts with nothing prepared.
    """

    def __init__(self) -> None:
        self._prepared: weakref.WeakKeyDictionary[Connection, set[str]] = weakref.WeakKeyDictionary()

    def execute(self, cur: Cursor, statement: Prepared, params: dict[str, object]) -> int:
        """Run ``statement`` on the cursor's connection, preparing it first if
        needed; return the number of round trips made."""
        trips = 1
        done = self._prepared.get(cur.connection)
        if done is None:
            done = self._prepared[cur.connection] = set()
        if statement.name not in done:
            self._prepare(cur, statement, done)
            trips += 1
        try:
            cur.execute(statement.execute, params)
        except (psycopg2.errors.InvalidSqlStatementName, psycopg2.errors.FeatureNotSupported) as exc:
            # Deallocated behind our back, or the table changed under it
            # ("cached plan must not change result type"): prepare again, once.
            if isinstance(exc, psycopg2.errors.FeatureNotSupported):
                if "cached plan" not in str(exc):
                    raise
                cur.execute(f"DEALLOCATE {statement.name}")
                trips += 1
            done.discard(statement.name)
            self._prepare(cur, statement, done)
            try:
                cur.execute(statement.execute, params)
            except psycopg2.errors.InvalidSqlStatementName:
                done.discard(statement.name)
                raise PGStoreError(
                    "a prepared statement vanished between two statements on one connection: is the "
                    "store behind PgBouncer in transaction mode? Set pgstore.prepare_statements = false"
                ) from None
            trips += 2
        return trips

    @staticmethod
    def _prepare(cur: Cursor, statement: Prepared, done: set[str]) -> None:
        try:
            cur.execute(statement.prepare)
        except psycopg2.errors.DuplicatePreparedStatement:
            pass  # same name, so the same text: prepared by an earlier user of the connection
        done.add(statement.name)
