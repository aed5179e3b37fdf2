"""PGStore: session rows in a PostgreSQL table, the Python form of Go's pgstore.

Every public method is one SQL statement, so one round trip, unless its
docstring says otherwise (with ``prepare_statements``, the first use of a
statement on a connection adds its ``PREPARE``). The SQL is in
:mod:`pyramid_pgstore.sql`, the table's layout in :mod:`pyramid_pgstore.schema`,
and how a statement is run (autocommit, retried once on a broken connection)
in :mod:`pyramid_pgstore.executor`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from psycopg2.pool import AbstractConnectionPool

from . import schema, testing
from .cleanup import CleanupHandle
from .dsn import connect_kwargs
from .executor import Executor, TransactionExecutor, nothing, one, rowcount, rows
from .expired import ExpiredRows
from .options import StoreOptions
from .pool import BorrowedPool, Checkout, OwnedPool
from .records import Lookup, SessionInfo, SessionRecord, storage_key, userid_column, userid_from_column
from .serializer import JSONSerializer, Serializer, deserialize, serialize
from .sql import ENDED_GRACE_SECONDS, Statement, Statements, interval

log = logging.getLogger("pyramid_pgstore")


class PGStore(ExpiredRows):
    """Sessions in a PostgreSQL table, reached through a psycopg2 pool.

    ``PGStore(dsn, ...)`` owns a ``ThreadedConnectionPool`` (built lazily in
    each process); :meth:`from_pool` borrows the caller's pool instead.
    Thread-safe: one store serves every thread of an app.

    :param dsn: libpq connection string or URL.
    :param options: a :class:`~pyramid_pgstore.options.StoreOptions`;
        keyword arguments naming its fields (``table``, ``pool_max``, ...)
        set or override them. A refused value raises
        :class:`~pyramid_pgstore.options.OptionError` (a ValueError) naming it.

    With ``create_table`` (the default) the table is created, or upgraded
    from an older release's layout, before the constructor returns;
    without, the first statement checks it and raises
    :class:`~pyramid_pgstore.SchemaOutdated` if it needs upgrading.
    """

    dsn: str | None
    options: StoreOptions

    def __init__(self, dsn: str, *, options: StoreOptions | None = None, **overrides: Any) -> None:
        options = StoreOptions.build(options, overrides)
        connect = connect_kwargs(dsn, options.pool_timeout)
        checkout = OwnedPool(options.pool_min, options.pool_max, options.pool_timeout, connect)
        self.dsn = dsn
        self._open(checkout, options)
        # Nothing stays open from construction: a server that forks workers
        # now gives them no shared socket. Each process connects on first use.
        checkout.release()

    @classmethod
    def from_pool(
        cls, pool: AbstractConnectionPool, *, options: StoreOptions | None = None, **overrides: Any
    ) -> PGStore:
        """A store on the caller's psycopg2 pool (Go's NewPGStoreFromPool),
        which its owner sizes (no ``pool_min``/``pool_max``) and :meth:`close`
        leaves open. Connections are borrowed in autocommit mode and given
        back with their own setting restored."""
        options = _borrowed(options, overrides)
        return cls._borrowing(BorrowedPool(pool, options.pool_timeout), options)

    @classmethod
    def from_engine(cls, engine: Any, *, options: StoreOptions | None = None, **overrides: Any) -> PGStore:
        """A store on an SQLAlchemy engine's pool (a ``postgresql+psycopg2``
        engine): one pool for the app and its sessions. The engine's
        ``pool_size``, ``max_overflow`` and ``pool_timeout`` govern waiting;
        :meth:`close` leaves the engine alone. Options as :meth:`from_pool`."""
        from .sqla import EngineCheckout  # SQLAlchemy is needed only here

        options = _borrowed(options, overrides)
        return cls._borrowing(EngineCheckout(engine, options.pool_timeout), options)

    @classmethod
    def _borrowing(cls, checkout: Checkout, options: StoreOptions) -> PGStore:
        store = cls.__new__(cls)
        store.dsn = None
        store._open(checkout, options)
        return store

    def _open(self, checkout: Checkout, options: StoreOptions) -> None:
        self.options = options
        self.table = options.table
        self.max_length = options.max_length
        self.serializer: Serializer = options.serializer or JSONSerializer()
        self._plain_sql = self._statements(bool(options.distributed))
        self._shifted: Statements | None = None  # built when a test first moves the clock
        self._transaction_sql: Statements | None = None  # built for the first in_transaction()
        self._checkout = checkout
        self._executor = Executor(checkout, options.table, options.failover_wait, options.commit_timeout)
        self._cleanups: list[CleanupHandle] = []
        self._table_checked = False
        testing.track_store(self)
        if options.create_table:
            self.prepare_table()
        if options.cleanup_interval:
            self.cleanup(options.cleanup_interval)

    def in_transaction(self, conn: Any, after: Any = None) -> PGStore:
        """This store's operations on ``conn``, inside the transaction its
        owner holds open (``pgstore.transaction = shared``): no ``SET
        LOCAL`` of its own (it would outlive the statement), no prepared
        statements, no retry. ``after()`` runs after each statement."""
        if self._transaction_sql is None:  # once: shared mode binds a copy per request
            if not self._table_checked:
                self._check_table()
            self._transaction_sql = Statements(self.table, distributed=self._plain_sql.distributed)
        bound = copy.copy(self)
        bound._plain_sql, bound._shifted = self._transaction_sql, None
        bound._executor = TransactionExecutor(conn, self.table, after)  # type: ignore[assignment]
        bound._table_checked = True
        return bound

    # -- statements and the table ---------------------------------------------

    def _statements(self, distributed: bool) -> Statements:
        options = self.options
        return Statements(
            options.table,
            options.synchronous_commit,
            options.statement_timeout,
            prepare=options.prepare_statements,
            distributed=distributed,
        )

    @property
    def _sql(self) -> Statements:
        if not testing.clock.offset:
            return self._plain_sql
        if self._shifted is None:  # while a test moves the clock: text statements, whatever the setting
            self._shifted = self._plain_sql.shifted()
        return self._shifted

    def _run(self, sql: Statement, params: dict[str, Any], result: Any, *, watched: bool = True) -> Any:
        if not self._table_checked:
            chosen_from = self._sql
            self._check_table()
            sql = chosen_from.counterpart(sql, self._sql)  # the table is on Citus, say
        return self._executor.run(sql, params, result, watched=watched)

    def table_state(self) -> schema.TableState:
        """What is in the database under the table's name (one statement;
        two on a database with Citus)."""
        return schema.inspect(self._executor, self._sql.quoted_table)

    def prepare_table(self) -> list[str]:
        """Create the table, or upgrade it to this release's layout; return
        the statements run (see :func:`pyramid_pgstore.schema.prepare`)."""
        done, state = schema.prepare(self._executor, self.table, self._sql.quoted_table)
        self._use_table(state)
        return done

    def _check_table(self) -> None:
        self._use_table(schema.check(self._executor, self.table, self._sql.quoted_table))

    def _use_table(self, state: schema.TableState) -> None:
        """From now on, the statements for the table as found: those Citus
        accepts where Citus manages it (or ``options.distributed`` says so)."""
        quoted = self._sql.quoted_table
        if testing.table_hooks and testing.table_ready(self._query, quoted):  # tests only
            state = schema.inspect(self._executor, quoted)
        distributed = state.distributed if self.options.distributed is None else self.options.distributed
        if distributed != self._plain_sql.distributed:
            self._plain_sql = self._statements(distributed)
            self._shifted = self._transaction_sql = None
        self._table_checked = True

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self._executor.run(sql, params, rows, watched=False)

    # -- one session ----------------------------------------------------------

    def serialize(self, data: Mapping[str, Any]) -> str:
        """Serialize session data, enforcing ``max_length``; no database work.

        :raises SessionTooLarge: the result is over ``max_length`` bytes.
        :raises TypeError: a value cannot be stored as it is; the message names its key.
        """
        return serialize(self.serializer, data, self.max_length)

    def lookup(self, session_id: str) -> Lookup:
        """The live session stored for ``session_id``, or whether it ended a
        moment ago (see :class:`~pyramid_pgstore.records.Lookup`).

        An expired row is never returned, even before cleanup removes it. A
        row that no longer deserializes is logged and treated as missing (it is
        left in place until it expires).
        """
        key = storage_key(session_id)
        row = self._run(self._sql.load, {"key": key}, one)
        if row is None:
            return Lookup(None)
        payload, created_on, modified_on, expires_on, loaded_at, version = row
        if expires_on <= loaded_at:  # both from the database's clock
            ended = payload == "" and (loaded_at - modified_on).total_seconds() < ENDED_GRACE_SECONDS
            return Lookup(None, ended=ended)
        try:
            data = deserialize(self.serializer, payload)
        except ValueError as exc:
            log.warning("stored session %s… does not deserialize (%s)", key[:12], exc)
            return Lookup(None, unreadable=True)
        record = SessionRecord(key, data, created_on, modified_on, expires_on, loaded_at, payload, version)
        return Lookup(record)

    def load(self, session_id: str) -> SessionRecord | None:
        """The live session stored for ``session_id``, or None."""
        return self.lookup(session_id).record

    def save(self, session_id: str, data: Mapping[str, Any], ttl: float | None, **row: Any) -> None:
        """Insert or replace the session, live for ``ttl`` seconds (None: forever).

        :param row: ``userid``, ``ip``, ``user_agent`` for the row (None if omitted).
        :raises SessionTooLarge: before any database work; the stored copy is untouched.
        """
        self.save_serialized(session_id, self.serialize(data), ttl, **row)

    def save_serialized(self, session_id: str, payload: str, ttl: float | None, **row: Any) -> None:
        """:meth:`save` for a payload already made by :meth:`serialize`."""
        self._write(self._sql.save, ttl, {"key": storage_key(session_id), "data": payload}, row, nothing)

    def replace_serialized(
        self,
        session_id: str,
        payload: str,
        ttl: float | None,
        *,
        version: str | None = None,
        keep_expiry: bool = False,
        cap: float | None = None,
        **row: Any,
    ) -> bool:
        """Replace the data of a live session; returns False, writing
        nothing, when it is gone (ended, deleted or expired) or, if
        ``version`` is given, when it was written since that version was read.

        What the session factory uses for a session it loaded, so that a
        request that started before a logout cannot bring the session back.
        ``keep_expiry`` leaves the expiry as it is (``ttl`` is then unused):
        a cheaper write, as the row's indexes need no new entry. The new
        expiry is never past ``cap`` seconds after the session's creation.
        """
        params = {"key": storage_key(session_id), "data": payload, "version": version, "cap": interval(cap)}
        family = (self._sql.replace_data,) * 2 if keep_expiry else self._sql.replace
        return self._write(family, ttl, params, row, rowcount) > 0

    def touch(self, session_id: str, ttl: float | None, *, cap: float | None = None, **row: Any) -> bool:
        """Move the expiry to ``ttl`` seconds from now (never past ``cap``
        seconds after the session's creation); data is untouched.

        Returns False when there is no live session to refresh.
        """
        params = {"key": storage_key(session_id), "cap": interval(cap)}
        return self._write(self._sql.touch, ttl, params, row, rowcount) > 0

    def renew(
        self,
        session_id: str,
        new_id: str,
        payload: str,
        ttl: float | None,
        *,
        version: str | None = None,
        **row: Any,
    ) -> str | None:
        """Move a live session to ``new_id`` with ``payload``, in one
        statement: the old id is dead when it returns. Returns the new row's
        version, or None (nothing done) if the session is gone or, with
        ``version``, was written since that version was read.

        ``created_on`` starts again: a new id is a new session, as far as
        ``max_lifetime`` is concerned.
        """
        params: dict[str, Any] = {"key": storage_key(session_id), "new_key": storage_key(new_id)}
        params.update(data=payload, version=version)
        found = self._write(self._sql.renew, ttl, params, row, one)
        if found is None:
            return self._done_before(new_id, payload)
        return found[0]

    def succeed(
        self,
        dead_id: str,
        session_id: str,
        payload: str,
        ttl: float | None,
        *,
        cap: float | None = None,
        **row: Any,
    ) -> bool:
        """Save a new session for a browser whose cookie named ``dead_id``,
        a session that expired or is gone (or is over ``cap`` seconds old),
        and end ``dead_id``'s row. Returns False, saving nothing, when
        another request already did so from the same ``dead_id``: then only
        one of them ever sets a cookie.
        """
        params: dict[str, Any] = {"old_key": storage_key(dead_id), "key": storage_key(session_id)}
        params.update(data=payload, cap=interval(cap))
        made = self._write(self._sql.succeed, ttl, params, row, rowcount) > 0
        return made or self._done_before(session_id, payload) is not None

    def _done_before(self, session_id: str, payload: str) -> str | None:
        """The version of a row ``session_id`` holding ``payload``, if one is
        there: a statement sent again after its connection was lost may have
        been done the first time, which the second then finds."""
        record = self.load(session_id)
        return record.version if record is not None and record.payload == payload else None

    def end(self, session_id: str, *, version: str | None = None) -> bool:
        """End the session now (``invalidate()``): its row keeps no data and
        is never loaded or written again; requests already in flight with its
        cookie see it as ended. Returns whether there was a session (with
        ``version``: one not written since that version was read)."""
        return self._run(self._sql.end, {"key": storage_key(session_id), "version": version}, rowcount) > 0

    def delete(self, session_id: str) -> bool:
        """Delete the session's row; returns whether a row was there."""
        return self._run(self._sql.delete, {"key": storage_key(session_id)}, rowcount) > 0

    def _write(
        self, family: tuple[Statement, ...], ttl: float | None, params: dict, row: Any, result: Any
    ) -> Any:
        unknown = set(row) - {"userid", "ip", "user_agent"}
        if unknown:
            raise TypeError(f"unknown row fields: {', '.join(sorted(unknown))}")
        userid = userid_column(row.get("userid"))
        params.update(userid=userid, ip=row.get("ip"), ua=row.get("user_agent"), ttl=interval(ttl))
        return self._run(family[0] if ttl is not None else family[1], params, result)

    # -- a user's sessions ----------------------------------------------------

    def sessions_of(self, userid: Any) -> list[SessionInfo]:
        """The live sessions whose owner is ``userid`` (compared as text),
        most recently active first: one index scan."""
        found = self._run(self._sql.sessions_of, {"userid": userid_column(userid)}, rows)
        return [SessionInfo(key, userid_from_column(owner) or "", *rest) for key, owner, *rest in found]

    def delete_sessions_of(self, userid: Any, keep: str | None = None) -> int:
        """End every live session of ``userid`` but the one whose session id
        is ``keep``; return how many ended. One statement."""
        keep_key = storage_key(keep) if keep else ""
        params = {"userid": userid_column(userid), "keep": keep_key}
        return self._run(self._sql.delete_sessions_of, params, rowcount)

    def delete_session_of(self, userid: Any, handle: str) -> bool:
        """End the live session ``handle`` (:attr:`SessionInfo.handle`) if
        it is ``userid``'s; False, doing nothing, if it is not."""
        params = {"userid": userid_column(userid), "key": handle}
        return self._run(self._sql.delete_session_of, params, rowcount) > 0

    # -- lifecycle ------------------------------------------------------------

    def stats(self) -> dict[str, int | None]:
        """Counters since construction: statements run (round trips),
        connections opened (None for a borrowed pool), checkouts that had to
        wait, waits that timed out, broken connections discarded."""
        checkout = self._checkout
        return {
            "queries": self._executor.queries,
            "connections_opened": checkout.opened,
            "waits": checkout.waits,
            "timeouts": checkout.timeouts,
            "discarded": checkout.discarded,
        }

    def close(self) -> None:
        """Stop background cleanups; close the pool if the store owns it."""
        for handle in self._cleanups:
            handle.stop()
        self._checkout.close()

    def __enter__(self) -> PGStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _borrowed(options: StoreOptions | None, overrides: dict[str, Any]) -> StoreOptions:
    """The options of a store on a pool it does not own: sized by its owner."""
    sizing = sorted({"pool_min", "pool_max"} & overrides.keys())
    if sizing:
        raise TypeError(f"a borrowed pool has its own size: no {', '.join(sizing)}")
    return StoreOptions.build(options, overrides)
