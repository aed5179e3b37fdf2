"""Micro: PGStore's operations against their very statement on a plain cursor, in one process.

1,000 sessions in a table of their own; operations interleaved round by
round (each round reads or writes the same session with every operation, in
a rotated order); median and p99 in microseconds at the client. What the
store adds around the round trip (hashing the id, pool checkout and return,
deserializing, the record) is its median minus that of the same statement
text on a plain psycopg2 cursor (``MICRO_PAIRS``, the ``overhead`` column).

Everything runs on one connection, the store's only one: the plain cursor
uses it while it sits idle in the store's pool. A second connection would be
a second server process, and whether the client and its server process share
a core changes a loopback round trip by tens of microseconds, more than what
is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

import floor
import redis
from matrix import TIMEOUT, set_synchronous_commit

from pyramid_pgstore.sql import Statements, interval
from pyramid_pgstore.store import PGStore, storage_key

TABLE = "micro_sessions"
COUNT = 1000  # sessions, each operation rotating over them
# The store's statements take a lifetime as interval text, the floor's as seconds.
STORE_TTL = interval(TIMEOUT)

# Each PGStore operation and the plain-cursor run of its very statement text.
MICRO_PAIRS = {
    "PGStore.load": "raw cursor, same SELECT",
    "PGStore.create (upsert)": "raw cursor, same upsert",
    "PGStore.write (UPDATE)": "raw cursor, same UPDATE",
}

Ops = dict[str, Callable[[int], Any]]


def time_ops(ops: Ops, rounds: int) -> dict[str, list[float]]:
    """Microseconds per call of each op, ops interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    clock = time.perf_counter_ns
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            op = ops[name]
            started = clock()
            op(i)
            times[name].append((clock() - started) / 1000)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, p99 and count of each op's times."""
    return {
        name: {
            "median_us": statistics.median(values),
            "p99_us": percentile(values, 99),
            "n": len(values),
        }
        for name, values in times.items()
    }


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class _Rig:
    """The store under test with :data:`COUNT` saved sessions, and a plain
    cursor on its one connection."""

    def __init__(self, dsn: str) -> None:
        self.store = PGStore(dsn, table=TABLE, pool_min=1, pool_max=1)
        self.ids = [secrets.token_urlsafe(32) for _ in range(COUNT)]
        self.keys = [storage_key(i) for i in self.ids]
        self.data = {"user": "user-0123456789ab", "csrf": secrets.token_hex(20), "n": 1}
        self.draft = self.store.draft(self.data)
        self.payload = self.draft.payload
        for session_id in self.ids:
            self.store.create(session_id, self.draft, TIMEOUT)
        # What a request read, for a write of a loaded session; its version
        # left out, as a request's second write names none (the raw UPDATE
        # below runs the same form).
        self.read = [dataclasses.replace(self.store.load(i), version=None) for i in self.ids]
        # The plain cursor's connection: the store's only one, idle in its pool
        # between operations (see above: one connection, one server process).
        self.raw = self.store._checkout.getconn()
        self.store._checkout.putconn(self.raw)

    def session(self, i: int) -> str:
        return self.ids[i % COUNT]

    def raw_statement(self, statement: str, ttl: Any = STORE_TTL) -> Callable[[int], Any]:
        """An op running ``statement`` on the plain cursor, with ``ttl`` as its lifetime."""

        def run(i: int) -> Any:
            params = {"key": self.keys[i % COUNT], "data": self.payload, "ttl": ttl}
            params.update(version=None, userid=None, ip="127.0.0.1", ua="bench", cap=None, lifetime=None)
            with self.raw.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchone() if cur.description else None

        return run

    def checkout(self, i: int) -> None:
        conn = self.store._checkout.getconn()
        self.store._checkout.putconn(conn)


def _floor_statements() -> tuple[str, str]:
    """The floor's SELECT and upsert on the micro table, with named placeholders."""
    load = floor.LOAD.replace(floor.TABLE, TABLE).replace("%s", "%(key)s")
    save = floor.SAVE.replace(floor.TABLE, TABLE)
    for name in ("key", "data", "ttl"):  # floor's placeholders are positional
        save = save.replace("%s", f"%({name})s", 1)
    return load, save


def _prepared(rig: _Rig) -> Statements:
    """The store's statements as ``prepare_statements=True`` makes them,
    prepared on the rig's connection."""
    prepared = Statements(TABLE, prepare=True)
    with rig.raw.cursor() as cur:
        for statement in (prepared.load, prepared.save[0], prepared.replace_data.live):
            cur.execute(statement.prepare)
    return prepared


def _operations(rig: _Rig, rclient: redis.Redis) -> tuple[Ops, Ops, Ops]:
    """The load, save and CPU-only operations, in the order they are reported."""
    store, sql, payload = rig.store, rig.store._sql, rig.payload  # the store's own statement text
    # The statements of a store built with synchronous_commit=False (it never connects).
    with PGStore(store.dsn, table=TABLE, create_table=False, synchronous_commit=False) as async_store:
        async_sql = async_store._sql
    prepared = _prepared(rig)
    floor_load, floor_save = _floor_statements()
    # What the Redis peers pay for the same operation, for scale.
    rkeys = ["micro:" + key for key in rig.keys]
    for key in rkeys:
        rclient.set(key, payload)
    loads: Ops = {
        "PGStore.load": lambda i: store.load(rig.session(i)),
        "raw cursor, same SELECT": rig.raw_statement(sql.load),
        "raw cursor, floor's SELECT": rig.raw_statement(floor_load),
        "raw cursor, same SELECT prepared": rig.raw_statement(prepared.load.execute),
        "redis GET (redis-py, for scale)": lambda i: rclient.get(rkeys[i % COUNT]),
    }
    saves: Ops = {
        "PGStore.create (upsert)": lambda i: store.create(rig.session(i), rig.draft, TIMEOUT),
        "raw cursor, same upsert": rig.raw_statement(sql.save[0]),
        "raw cursor, floor's upsert": rig.raw_statement(floor_save, TIMEOUT),
        # What a request that changed its session writes: the data, the
        # expiry left alone until it is due (a HOT update).
        "PGStore.write (UPDATE)": lambda i: store.write(
            rig.session(i), rig.draft, rig.read[i % COUNT], TIMEOUT, keep_expiry=True
        ),
        "raw cursor, same UPDATE": rig.raw_statement(sql.replace_data.live),
        "raw cursor, UPDATE with the expiry": rig.raw_statement(sql.replace[0].live),
        "raw cursor, upsert with SET LOCAL sc=off": rig.raw_statement(async_sql.save[0]),
        "raw cursor, same upsert prepared": rig.raw_statement(prepared.save[0].execute),
        "raw cursor, same UPDATE prepared": rig.raw_statement(prepared.replace_data.live.execute),
        "redis SETEX (redis-py, for scale)": lambda i: rclient.setex(rkeys[i % COUNT], TIMEOUT, payload),
    }
    cpu: Ops = {
        "storage_key (sha256)": lambda i: storage_key(rig.session(i)),
        "pool getconn + putconn": rig.checkout,
        "serializer.loads": lambda i: store.serializer.loads(payload),
        "serialize (dumps + size check)": lambda i: store.serialize(rig.data),
    }
    return loads, saves, cpu


def run_micro(dsn: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """PGStore.load / create / write (the write of a loaded session)
    against the same statement on a plain cursor, and against other SQL, in
    one process: ``{"rounds": n, section: {operation: summary}}``.
    ``synchronous_commit`` is set server-wide for the two save sections."""
    rounds = args.micro_rounds
    rig = _Rig(dsn)
    rclient = redis.Redis.from_url(redis_url)
    try:
        loads, saves, cpu = _operations(rig, rclient)
        out: dict[str, Any] = {"rounds": rounds}
        set_synchronous_commit(dsn, "on")
        out["load"] = summarize(time_ops(loads, rounds))
        out["save, synchronous_commit=on"] = summarize(time_ops(saves, max(rounds // 4, 100)))
        set_synchronous_commit(dsn, "off")
        out["save, synchronous_commit=off"] = summarize(time_ops(saves, rounds))
        set_synchronous_commit(dsn, "on")
        out["cpu only (no I/O)"] = summarize(time_ops(cpu, rounds))
        return out
    finally:
        rig.store.close()
        rclient.close()
