"""PGStore: session rows in a PostgreSQL table, the Python form of Go's pgstore.

Every public method is one SQL statement, so one round trip, unless its
docstring says otherwise (with ``prepare_statements``, the first use of a
statement on a connection adds its ``PREPARE``). The SQL is in
:mod:`pyramid_pgstore.sql`, the table's layout in :mod:`pyramid_pgstore.schema`,
and how a statement is run (autocommit, retried once on a broken connection)
in :mod:`pyramid_pgstore.executor`.

What a session needs of the store is six methods, each one statement in the
common case: :meth:`~PGStore.lookup` a session by its id;
:meth:`~PGStore.create` a new one; :meth:`~PGStore.write` a session a request
read (merging with a concurrent write, or under a new id); :meth:`~PGStore.touch`
its expiry; :meth:`~PGStore.end` it; and :meth:`~PGStore.delete_expired` rows.
The store encodes the data (:meth:`~PGStore.draft`), checks its size and
merges; the session decides which to call (:mod:`pyramid_pgstore.lifecycle`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

from psycopg2.pool import AbstractConnectionPool

from . import schema, testing
from .cleanup import DEFAULT_BATCH_SIZE, Cleaner, CleanupHandle, run_cleanup
from .dsn import connect_kwargs
from .events import SessionEnded
from .executor import Executor, Runner, TransactionExecutor, nothing, one, rowcount, rows, scalar
from .merge import write_merging
from .options import StoreOptions
from .pool import BorrowedPool, Checkout, OwnedPool
from .records import Draft, Lookup, SessionInfo, SessionRecord, storage_key, userid_column, userid_from_column
from .serializer import JSONSerializer, Serializer, check, deserialize, encode, serialize
from .sql import ENDED_GRACE_SECONDS, Guarded, Statement, Statements, interval

log = logging.getLogger("pyramid_pgstore")

S = TypeVar("S", Statement, Guarded)

# Seconds allowed for a write to reach the server after the store decided
# that the row it read is still live (see PGStore._surely_live).
_IN_FLIGHT = 1.0


class PGStore:
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
    #: Seconds added to the database's clock (0 but in tests: see :meth:`set_clock_offset`).
    clock_offset: float = 0.0

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
        checkout.release()  # an engine's pool keeps no connection of the construction (see EngineCheckout)
        return store

    def _open(self, checkout: Checkout, options: StoreOptions) -> None:
        executor = Executor(checkout, options.table, options.failover_wait, options.commit_timeout)
        self._configure(options, executor, _statements(options, bool(options.distributed)))
        self._checkout: Checkout | None = checkout
        self._cleanups: list[CleanupHandle] = []
        self._table_checked = False
        self._transaction_sql: Statements | None = None  # built for the first in_transaction()
        testing.track_store(self)
        if options.create_table:
            self.prepare_table()
        if options.cleanup_interval:
            self.cleanup(options.cleanup_interval)

    def _configure(self, options: StoreOptions, executor: Runner, statements: Statements) -> None:
        self.options = options
        self.table = options.table
        self.max_length = options.max_length
        self.serializer: Serializer = options.serializer or JSONSerializer()
        self._executor = executor
        self._plain_sql = self._sql = statements

    def in_transaction(self, conn: Any, after: Any = None) -> PGStore:
        """A store running this store's statements on ``conn``, inside the
        transaction its owner holds open (``pgstore.transaction = shared``):
        no ``SET LOCAL`` of its own (it would outlive the statement), no
        prepared statements, no retry, no pool. ``after()`` runs after each
        statement. Cheap: the statements are built once per store."""
        if self._transaction_sql is None:
            if not self._table_checked:
                self._check_table()
            distributed = self._plain_sql.distributed
            # typed: on the app's driver, maybe psycopg 3
            self._transaction_sql = Statements(self.table, typed=True, distributed=distributed)
        bound = PGStore.__new__(PGStore)
        bound.dsn = None
        bound._configure(self.options, TransactionExecutor(conn, self.table, after), self._transaction_sql)
        bound._checkout, bound._cleanups, bound._table_checked = None, [], True
        bound._transaction_sql = self._transaction_sql
        if self.clock_offset:
            bound.set_clock_offset(self.clock_offset)
        return bound

    def set_clock_offset(self, seconds: float) -> None:
        """Compute "now" as the database's clock plus ``seconds`` from now on
        (a test hook: :func:`pyramid_pgstore.testing.advance_clock` calls it).
        The statements are rebuilt, as text, with the offset written in; 0
        brings back the production statements. Not for use while serving."""
        self.clock_offset = float(seconds)
        self._sql = self._plain_sql if not seconds else self._plain_sql.shifted(seconds)

    # -- statements and the table ---------------------------------------------

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
            self._plain_sql = _statements(self.options, distributed)
            self._transaction_sql = None
            self.set_clock_offset(self.clock_offset)
        self._table_checked = True

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self._executor.run(sql, params, rows, watched=False)

    # -- one session: what the session factory uses ---------------------------

    def lookup(self, session_id: str) -> Lookup:
        """The live session stored for ``session_id``, or whether it ended a
        moment ago (see :class:`~pyramid_pgstore.records.Lookup`).

        An expired row is never returned, even before cleanup removes it. A
        row that no longer deserializes is logged and treated as missing (it is
        left in place until it expires).
        """
        key = storage_key(session_id)
        asked = self._clock()  # before the server's now(): the row lives at least its time left from here
        row = self._run(self._sql.load, {"key": key}, one)
        if row is None:
            return Lookup(None)
        payload, created_on, modified_on, expires_on, loaded_at, version, lifetime = row
        if expires_on <= loaded_at:  # both from the database's clock
            ended = payload == "" and (loaded_at - modified_on).total_seconds() < ENDED_GRACE_SECONDS
            return Lookup(None, ended=ended)
        try:
            data = deserialize(self.serializer, payload)
        except ValueError as exc:
            log.warning("stored session %s… does not deserialize (%s)", key[:12], exc)
            return Lookup(None, unreadable=True)
        record = SessionRecord.of(
            key, data, created_on, modified_on, expires_on, loaded_at, payload, version, lifetime, asked
        )
        return Lookup(record)

    def draft(
        self,
        data: Mapping[str, Any],
        *,
        owner_key: str = "auth.userid",
        ip: str | None = None,
        user_agent: str | None = None,
        claim: Collection[str] = (),
        lifetime: float | None = None,
    ) -> Draft:
        """``data`` as this store would write it, for :meth:`create` and
        :meth:`write`: encoded, and what the row records beside it (the user
        under ``owner_key``, the client, the session's own ``lifetime``). No
        database work, no size check (writing does that).

        :raises TypeError: a value cannot be stored as it is; the message names its key.
        """
        payload = encode(self.serializer, data)
        return Draft(data, payload, owner_key, ip, user_agent, frozenset(claim), lifetime)

    def create(
        self,
        session_id: str,
        draft: Draft,
        ttl: float | None,
        *,
        replacing: str | None = None,
        cap: float | None = None,
    ) -> bool:
        """Store a new session ``session_id`` holding ``draft``, live for
        ``ttl`` seconds (None: forever). One statement.

        ``replacing``: the id a browser's cookie named, whose session is dead
        (expired, deleted, or more than ``cap`` seconds old): its row is
        ended in the same statement, and nothing is stored, returning False,
        when another request already did so from the same dead id, so that
        only one of them ever sets a cookie.

        :raises SessionTooLarge: before any database work.
        """
        check(self.serializer, draft.data, draft.payload, self.max_length)
        params = self._row(
            {"key": storage_key(session_id), "data": draft.payload, "ttl": interval(ttl)}, draft
        )
        if replacing is None:
            self._run(self._statement(self._sql.save, ttl), params, nothing)
            return True
        params.update(old_key=storage_key(replacing), cap=interval(cap))
        if self._run(self._statement(self._sql.succeed, ttl), params, rowcount) > 0:
            return True
        return self._done_before(session_id, draft.payload) is not None

    def write(
        self,
        session_id: str,
        draft: Draft,
        read: SessionRecord,
        ttl: float | None,
        *,
        cap: float | None = None,
        keep_expiry: bool = False,
        new_id: str | None = None,
    ) -> SessionRecord | None:
        """Write ``draft`` over the live session ``session_id``, which the
        caller read as ``read``; return the row as written, or None, writing
        nothing, when the session is gone (ended, deleted or expired since
        it was read): a request that started before a logout cannot bring
        the session back. Whether it may have expired is known from the
        time it had left when read: only then does the statement test
        liveness too (:class:`~pyramid_pgstore.sql.Guarded`).

        One statement when nobody wrote the row since ``read``; otherwise the
        draft's changes are merged into the row as it is now (one more read and
        write per conflict, :mod:`pyramid_pgstore.merge`), so changes to
        different keys by concurrent requests both survive.

        :param read: the session as the caller read it; its ``key`` (the
            hash of ``session_id``) finds the row.
        :param ttl: the new lifetime in seconds (None: forever), never past
            ``cap`` seconds after the session's creation (None: no cap).
        :param keep_expiry: leave the expiry as it is (``ttl`` unused): a
            cheaper write, as the row's indexes need no new entry.
        :param new_id: move the session to this id in the same statement: the
            old id is dead when it returns, and the new row starts its life now
            (its ``max_lifetime`` counts from here).
        :raises SessionTooLarge: before any write; the stored copy is untouched.
        """

        key = read.key  # storage_key(session_id), hashed when it was read
        # The new expiry, for a write that sets one.
        expiry = {} if keep_expiry and new_id is None else {"ttl": interval(ttl), "cap": interval(cap)}

        def write_once(base: SessionRecord, attempt: Draft, version: str | None) -> SessionRecord | None:
            params = self._row({"key": key, "data": attempt.payload, "version": version, **expiry}, attempt)
            surely_live = self._surely_live(base)
            if new_id is None:
                guarded = self._sql.replace_data if keep_expiry else self._statement(self._sql.replace, ttl)
                if self._run(guarded.pick(version, surely_live), params, rowcount) == 0:
                    return None
                written = None  # an UPDATE returns no version: a second write this request writes over
                key_now, created_on, read_at = base.key, base.created_on, base.read_at
            else:
                params["new_key"] = storage_key(new_id)
                renew = self._statement(self._sql.renew, ttl).pick(version, surely_live)
                found = self._run(renew, params, one)
                written = found[0] if found is not None else self._done_before(new_id, attempt.payload)
                if written is None:
                    return None
                # A new row, born now; how long it lives is known to the database only.
                key_now, created_on, read_at = params["new_key"], base.loaded_at, None
            return SessionRecord.of(
                key_now,
                dict(attempt.data),
                created_on,
                base.modified_on,
                base.expires_on,
                base.loaded_at,
                attempt.payload,
                written,
                attempt.lifetime,
                read_at,
            )

        return write_merging(self, read, draft, write_once, lambda: self.load(session_id))

    def _clock(self) -> float:
        """This store's monotonic clock (seconds): ``time.monotonic()`` plus
        the test clock's offset (:meth:`set_clock_offset`)."""
        return time.monotonic() + self.clock_offset

    def _surely_live(self, read: SessionRecord) -> bool:
        """The row read as ``read`` is still live, unless written since: the
        time it had left when read is more than the time since it was asked
        for, by a margin for the write's own way to the server."""
        if read.read_at is None:
            return False
        left = (read.expires_on - read.loaded_at).total_seconds()
        return left > self._clock() - read.read_at + _IN_FLIGHT

    def touch(self, session_id: str, ttl: float | None, *, cap: float | None = None, **row: Any) -> bool:
        """Move the expiry to ``ttl`` seconds from now (never past ``cap``
        seconds after the session's creation); data is untouched. ``row``:
        ``ip`` and ``user_agent`` to record (None if omitted).

        Returns False when there is no live session to refresh.
        """
        params = {"key": storage_key(session_id), "cap": interval(cap), "ttl": interval(ttl)}
        params.update(ip=row.pop("ip", None), ua=row.pop("user_agent", None))
        if row:
            raise TypeError(f"unknown row fields: {', '.join(sorted(row))}")
        return self._run(self._statement(self._sql.touch, ttl), params, rowcount) > 0

    def end(self, session_id: str, *, version: str | None = None) -> bool:
        """End the session now (``invalidate()``): its row keeps no data and
        is never loaded or written again; requests already in flight with its
        cookie see it as ended. Returns whether there was a session (with
        ``version``: one not written since that version was read)."""
        return self._run(self._sql.end, {"key": storage_key(session_id), "version": version}, rowcount) > 0

    def _done_before(self, session_id: str, payload: str) -> str | None:
        """The version of a row ``session_id`` holding ``payload``, if one is
        there: a statement sent again after its connection was lost may have
        been done the first time, which the second then finds. One statement;
        run only when a write changed nothing."""
        record = self.load(session_id)
        return record.version if record is not None and record.payload == payload else None

    def _row(self, params: dict[str, Any], draft: Draft) -> dict[str, Any]:
        params.update(userid=userid_column(draft.userid), ip=draft.ip, ua=draft.user_agent)
        params["lifetime"] = draft.lifetime
        return params

    @staticmethod
    def _statement(family: tuple[S, S], ttl: float | None) -> S:
        """A write family's statement: with a lifetime, or forever."""
        return family[0] if ttl is not None else family[1]

    # -- one session: for scripts, tests and apps -----------------------------

    def serialize(self, data: Mapping[str, Any]) -> str:
        """Serialize session data, enforcing ``max_length``; no database work.

        :raises SessionTooLarge: the result is over ``max_length`` bytes.
        :raises TypeError: a value cannot be stored as it is; the message names its key.
        """
        return serialize(self.serializer, data, self.max_length)

    def load(self, session_id: str) -> SessionRecord | None:
        """The live session stored for ``session_id``, or None."""
        return self.lookup(session_id).record

    def save(
        self,
        session_id: str,
        data: Mapping[str, Any],
        ttl: float | None,
        *,
        userid: Any = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        """Insert or replace the session, live for ``ttl`` seconds (None:
        forever), owned by ``userid`` (compared as text), recording the client.

        :raises SessionTooLarge: before any database work; the stored copy is untouched.
        """
        params = {
            "key": storage_key(session_id),
            "data": self.serialize(data),
            "userid": userid_column(userid),
        }
        params.update(ip=ip, ua=user_agent, ttl=interval(ttl), lifetime=None)
        self._run(self._statement(self._sql.save, ttl), params, nothing)

    def delete(self, session_id: str) -> bool:
        """Delete the session's row; returns whether a row was there."""
        return self._run(self._sql.delete, {"key": storage_key(session_id)}, rowcount) > 0

    # -- a user's sessions ----------------------------------------------------

    def sessions_of(self, userid: Any) -> list[SessionInfo]:
        """The live sessions whose owner is ``userid`` (compared as text),
        most recently active first: one index scan."""
        found = self._run(self._sql.sessions_of, {"userid": userid_column(userid)}, rows)
        return [SessionInfo(key, userid_from_column(owner) or "", *rest) for key, owner, *rest in found]

    def delete_sessions_of(self, userid: Any, keep: str | None = None, *, request: Any = None) -> int:
        """End every live session of ``userid`` but the one whose session id
        is ``keep``; return how many ended. One statement. Each ended session
        is a :class:`~pyramid_pgstore.SessionEnded` (``"revoked"``), notified
        through ``request``'s registry (or :attr:`notify`)."""
        keep_key = storage_key(keep) if keep else ""
        params = {"userid": userid_column(userid), "keep": keep_key}
        ended = self._run(self._sql.delete_sessions_of, params, rows)
        return self._announce_ended(ended, userid, "revoked", request)

    def delete_session_of(self, userid: Any, handle: str, *, request: Any = None) -> bool:
        """End the live session ``handle`` (:attr:`SessionInfo.handle`) if
        it is ``userid``'s; False, doing nothing, if it is not. Notified as
        :meth:`delete_sessions_of` does."""
        params = {"userid": userid_column(userid), "key": handle}
        ended = self._run(self._sql.delete_session_of, params, rows)
        return self._announce_ended(ended, userid, "revoked", request) > 0

    def delete_sessions_beyond(self, userid: Any, most: int, *, request: Any = None) -> int:
        """End ``userid``'s live sessions beyond the ``most`` most recently
        seen (``pgstore.max_sessions_per_user``, after a login); return how
        many ended. One statement. Each is a
        :class:`~pyramid_pgstore.SessionEnded` (``"limit"``)."""
        params = {"userid": userid_column(userid), "most": most}
        ended = self._run(self._sql.delete_sessions_beyond, params, rows)
        return self._announce_ended(ended, userid, "limit", request)

    #: Where events go for a store method called without a request (``None``:
    #: nowhere). ``config.include('pyramid_pgstore')`` sets the registry's ``notify``.
    notify: Callable[[Any], None] | None = None

    def _announce_ended(self, ended: list[tuple[Any, ...]], userid: Any, reason: str, request: Any) -> int:
        registry = getattr(request, "registry", None)
        notify = registry.notify if registry is not None else self.notify
        if notify is not None:
            owner = None if userid is None else str(userid)
            for (handle,) in ended:
                notify(SessionEnded(request, handle, owner, reason))
        return len(ended)

    # -- expired rows (Go's DeleteExpired, Cleanup, RunCleanup) ---------------

    def delete_expired(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Delete expired sessions and return how many went (Go's DeleteExpired).

        Works in batches of ``batch_size`` rows, one statement (and one short
        transaction) each, until a batch comes back short.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total = 0
        while True:
            deleted = self.delete_expired_batch(batch_size)
            total += deleted
            if deleted < batch_size:
                return total

    def delete_expired_batch(self, limit: int) -> int:
        """Delete up to ``limit`` expired rows in one short transaction,
        skipping rows a request is writing; return how many went."""
        return self._run(self._sql.delete_expired_batch, {"limit": limit}, rowcount)

    def cleanup_lock(self, wait: bool = False, stop: threading.Event | None = None) -> Any:
        """Hold the table's cleanup lock for a ``with`` block, which gets
        whether it was taken.

        One cleaner per table at a time, across processes: a transaction-level
        advisory lock in a transaction held open on a connection of its own
        (so it works through PgBouncer in transaction mode too).

        :param wait: poll until the lock is free (or ``stop`` is set) instead
            of yielding False at once.
        """
        sql = self._sql
        lock = (sql.cleanup_lock_setup, sql.try_cleanup_lock, {"table": sql.quoted_table})
        return self._own_executor().hold_lock(*lock, wait=wait, stop=stop)

    def count_expired(self) -> int:
        """How many rows a cleanup pass would delete now (a full count):
        expired sessions, less those ended within the last
        :data:`~pyramid_pgstore.sql.ENDED_GRACE`, which cleanup keeps."""
        return self._run(self._sql.count_expired, {}, scalar, watched=False)  # a scan: no commit_timeout

    def table_stats(self) -> dict[str, int]:
        """Live and expired row counts, of the expired how many are sessions
        ended less than a minute ago (``ended_recently``: cleanup keeps them
        for requests in flight), table and index sizes in bytes."""
        live, expired, recent, table_bytes, index_bytes = self._run(
            self._sql.table_stats, {"table": self._sql.quoted_table}, one, watched=False
        )
        return {
            "live": live,
            "expired": expired,
            "ended_recently": recent,
            "table_bytes": table_bytes,
            "index_bytes": index_bytes,
        }

    def run_cleanup(self, interval: float, stop_event: threading.Event) -> Iterator[int | Exception]:
        """Every ``interval`` seconds, delete expired sessions (Go's RunCleanup).

        Yields, for each run, the number deleted or the exception that run
        hit, until ``stop_event`` is set. Runs are batched and locked (see
        :mod:`pyramid_pgstore.cleanup`); waits are ``interval`` ± 10 %.
        """
        return run_cleanup(Cleaner(self), interval, stop_event)

    def cleanup(self, interval: float) -> CleanupHandle:
        """Start a daemon thread running :meth:`run_cleanup` (Go's Cleanup).

        Each run's error is logged and the thread goes on. :meth:`close` stops it.
        """
        handle = CleanupHandle(Cleaner(self), interval)
        self._cleanups.append(handle)
        return handle

    # -- lifecycle ------------------------------------------------------------

    def _own_executor(self) -> Executor:
        if not isinstance(self._executor, Executor):
            raise TypeError("a store bound to a transaction (in_transaction) has no connections of its own")
        return self._executor

    def stats(self) -> dict[str, int | None]:
        """Counters since construction: statements run (round trips),
        connections opened (None for a borrowed pool), checkouts that had to
        wait, waits that timed out, broken connections discarded."""
        checkout = self._own_executor().checkout
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
        if self._checkout is not None:
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


def _statements(options: StoreOptions, distributed: bool) -> Statements:
    """The store's statements, for a table Citus manages or not."""
    return Statements(
        options.table,
        options.synchronous_commit,
        options.statement_timeout,
        prepare=options.prepare_statements,
        distributed=distributed,
    )
