"""SQLAlchemy: the sessions table for Alembic, and the app's engine as the store's pool.

Imports SQLAlchemy, so it is imported only by the code that uses it:
``PGStore.from_engine``, ``pgstore.engine``, or an app's Alembic ``env.py``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from psycopg2.extensions import connection as Connection
from pyramid.registry import Registry
from sqlalchemy import Column, Index, MetaData, PrimaryKeyConstraint, Table, Text, text
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, TIMESTAMP
from sqlalchemy.engine import Engine

from . import schema
from .errors import PGStoreError, PoolTimeout
from .pool import Checkout


def sessions_table(metadata: MetaData, name: str = "http_sessions", schema_name: str | None = None) -> Table:
    """The sessions table as an SQLAlchemy ``Table`` on ``metadata``, exactly
    as ``config.include`` creates it (columns, key, both indexes, the
    version comment): for Alembic's autogenerate to leave alone, or to own
    in migrations. ``name`` and ``schema_name`` as in ``pgstore.table``
    (``schema.name``)."""
    table_name = name if schema_name is None else f"{schema_name}.{name}"
    if table_name in metadata.tables:  # an Alembic env.py runs more than once in a process
        return metadata.tables[table_name]
    _, expires_index, userid_index = (part.strip('"') for part in schema.names(table_name))
    timestamp = TIMESTAMP(timezone=True)
    return Table(
        name,
        metadata,
        Column("key", Text),
        Column("data", Text, nullable=False),
        Column("created_on", timestamp, nullable=False),
        Column("modified_on", timestamp, nullable=False),
        Column("expires_on", timestamp, nullable=False),
        Column("userid", Text),
        Column("ip", Text),
        Column("user_agent", Text),
        Column("last_seen", timestamp),
        Column("lifetime", DOUBLE_PRECISION),
        # PostgreSQL's own name, whatever naming convention the metadata has
        PrimaryKeyConstraint("key", name=f"{name[:58]}_pkey"),
        Index(expires_index, "expires_on"),
        Index(userid_index, "userid", postgresql_using="hash", postgresql_where=text("userid IS NOT NULL")),
        schema=schema_name,
        comment=schema.COMMENT,
    )


_ENGINES = "pyramid_pgstore.engines"  # registry key: {settings prefix: engine}


def engine_for(registry: Registry, prefix: str = "sqlalchemy.") -> Engine:
    """The app's engine for the settings under ``prefix``: the one
    :func:`register_engine` gave, else one made (once per registry) with
    SQLAlchemy's ``engine_from_config``. ``pgstore.engine = sqlalchemy.``
    takes its connections from this engine, so an app that gets its engine
    here too has one pool, not two."""
    engines = registry.setdefault(_ENGINES, {})  # type: ignore[attr-defined]
    if prefix not in engines:
        engines[prefix] = sqlalchemy.engine_from_config(registry.settings, prefix)
    return engines[prefix]


def register_engine(registry: Registry, engine: Engine, prefix: str = "sqlalchemy.") -> None:
    """Make ``engine`` the app's engine for ``prefix`` (a test's engine, the
    cookiecutter's ``dbengine`` setting), for :func:`engine_for` and
    ``pgstore.engine``: before ``config.include('pyramid_pgstore')``.

    :raises ValueError: another engine is already the one for ``prefix``.
    """
    engines = registry.setdefault(_ENGINES, {})  # type: ignore[attr-defined]
    if engines.get(prefix, engine) is not engine:
        raise ValueError(
            f"an engine for {prefix!r} was made already (include pyramid_pgstore after registering yours)"
        )
    engines[prefix] = engine


class EngineCheckout(Checkout):
    """Connections borrowed from an SQLAlchemy engine's pool (its QueuePool
    waits up to its own ``pool_timeout``), in autocommit mode while lent,
    given back with the engine's setting restored; a broken one is
    invalidated and the engine's idle connections discarded with it."""

    def __init__(self, engine: Engine, timeout: float) -> None:
        if engine.dialect.driver != "psycopg2":
            raise PGStoreError(
                f"PGStore.from_engine needs a psycopg2 engine (postgresql+psycopg2://...), "
                f"not {engine.dialect.name}+{engine.dialect.driver}"
            )
        self.engine = engine
        self._lent: dict[int, Any] = {}  # id(DBAPI connection) -> SQLAlchemy's pooled connection
        super().__init__(timeout)

    def getconn(self) -> Connection:
        if self._closed:
            raise PGStoreError("the store is closed")
        try:
            pooled = self.engine.raw_connection()
        except sqlalchemy.exc.TimeoutError as exc:
            self.timeouts += 1
            raise PoolTimeout(f"no free connection in the SQLAlchemy engine's pool: {exc}") from exc
        except sqlalchemy.exc.DBAPIError as exc:
            raise self._cannot_connect(exc.orig or exc) from exc
        conn: Connection = pooled.driver_connection  # type: ignore[assignment]
        self._lent[id(conn)] = pooled
        conn.autocommit = True
        return conn

    def putconn(self, conn: Connection, broken: bool = False) -> None:
        pooled = self._lent.pop(id(conn))
        if broken or conn.closed:
            pooled.invalidate()
            self.engine.dispose()  # the idle ones went through the same restart or cut
            self.discarded += 1
            return
        if conn.info.transaction_status != TRANSACTION_STATUS_IDLE:  # not idle: do not hand it back half-done
            pooled.invalidate()
            return
        conn.autocommit = False  # what SQLAlchemy expects of a DBAPI connection
        pooled.close()  # back to the engine's pool
