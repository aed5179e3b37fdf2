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
from sqlalchemy.engine import URL, Engine

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


def _foreign_driver(url: URL) -> str | None:
    """What is wrong with an engine of ``url`` for the store, or None.

    The store's statements, retries and cancels are psycopg2's: an engine of
    another driver (psycopg 3's ``postgresql+psycopg``, asyncpg, pg8000) or
    of another database cannot lend it connections.
    """
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if (backend, driver) == ("postgresql", "psycopg2"):
        return None
    return f"the engine is {backend}+{driver}; the store borrows psycopg2 connections only"


def unsupported(url: URL | str) -> str | None:
    """Why ``pgstore.engine`` cannot name an engine on ``url``, and what to
    set instead (``pgstore.dsn``, which takes the engine's URL as it is, and
    ``pgstore.transaction = shared``, which runs the session's statements
    on the app's connections whatever their driver); None if it can.

    :raises sqlalchemy.exc.ArgumentError: ``url`` is not a URL.
    """
    problem = _foreign_driver(sqlalchemy.engine.make_url(url))
    if problem is None:
        return None
    return (
        f"{problem} (postgresql+psycopg2://). Give the store a pool of its own instead: pgstore.dsn = "
        "the engine's URL (and pgstore.transaction = shared to write the session in the app's "
        "transaction, on its connection)"
    )


class EngineCheckout(Checkout):
    """Connections borrowed from an SQLAlchemy engine's pool (its QueuePool
    waits up to its own ``pool_timeout``), in autocommit mode while lent,
    given back with the engine's setting restored; a broken one is
    invalidated and the engine's idle connections discarded with it.

    Forking servers (``gunicorn --preload``): a connection the engine's pool
    kept in a process that then forks would be one socket shared by every
    child. So the connections the store borrows while it is being built (the
    table's check or creation) are closed when given back, not pooled, until
    :meth:`release`; and in a child process the engine's pool is replaced by
    an empty one (``engine.dispose(close=False)``, SQLAlchemy's own advice
    for a forked process): the parent's connections, the app's own included,
    are forgotten unclosed, and the child opens its own.
    """

    def __init__(self, engine: Engine, timeout: float) -> None:
        problem = _foreign_driver(engine.url)
        if problem is not None:
            raise PGStoreError(f"PGStore.from_engine: {problem}; use PGStore(dsn) with the engine's URL")
        self.engine = engine
        self._lent: dict[int, Any] = {}  # id(DBAPI connection) -> SQLAlchemy's pooled connection
        self._building = True  # until release(): give connections back closed
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
        if self._building or conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
            # Closed, not pooled: while the store is being built (see the
            # class), or when not idle (not to be handed back half-done).
            pooled.invalidate()
            return
        conn.autocommit = False  # what SQLAlchemy expects of a DBAPI connection
        pooled.close()  # back to the engine's pool

    def release(self) -> None:
        """The store is built: from now on connections go back to the engine's pool."""
        self._building = False

    def after_fork(self) -> None:
        super().after_fork()
        self._lent = {}
        if not self._closed:
            self.engine.dispose(close=False)  # the parent's connections: forgotten, not closed
