"""Scale: the same sessions read from a small table and from a big one, interleaved.

The pgstore backend's sessions are copied into a second table, which is then
filled with generated sessions (``key`` = ``encode(sha256(...), 'hex')``,
like ``storage_key``) to ``--scale-rows`` rows and ``VACUUM ANALYZE``d. The
same sessions are then read from both tables: in-process ``PGStore.load``
latency (both stores on one borrowed connection, ``PGStore.from_pool``: two
connections are two server processes, and where the scheduler puts each one
changes a loopback round trip by tens of microseconds, more than the
difference measured), and HTTP ``/read`` through a second pgstore server on
the big table. The target is judged on the in-process median.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import psycopg2
from matrix import Backend, check_sessions, measured
from micro import summarize, time_ops
from psycopg2.pool import SimpleConnectionPool
from servers import app_server, log, wrk

from pyramid_pgstore.cookie import RotatingSigner
from pyramid_pgstore.store import PGStore

BIG = "http_sessions_big"


def fill_big_table(dsn: str, rows: int) -> tuple[int, int, str]:
    """Make :data:`BIG`: every row of ``http_sessions`` plus filler sessions
    up to ``rows``. Returns the small and the big table's row counts and the
    big one's size (table + indexes, pretty-printed)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {BIG} (LIKE http_sessions INCLUDING ALL)")
        cur.execute(f"INSERT INTO {BIG} SELECT * FROM http_sessions")
        cur.execute("SELECT count(*) FROM http_sessions")
        small_rows = cur.fetchone()[0]
        # Filler sessions, keyed like storage_key (sha256 hex), live for a day;
        # nine in ten have a user, who has about ten sessions (devices).
        cur.execute(
            f"INSERT INTO {BIG} (key, data, created_on, modified_on, expires_on, userid, last_seen)"
            " SELECT encode(sha256(('filler-' || g)::bytea), 'hex'),"
            ' \'{"user":"user-\' || g || \'","csrf":"\' || md5(g::text) || \'","n":1}\','
            " now(), now(), now() + interval '1 day',"
            " CASE WHEN g %% 10 <> 0 THEN 'user-' || (g %% %s) END, now() - g * interval '1 ms'"
            " FROM generate_series(1, %s) AS g",
            (max(rows // 10, 1), rows - small_rows),
        )
        cur.execute(f"VACUUM ANALYZE http_sessions, {BIG}")
        cur.execute(f"SELECT count(*), pg_size_pretty(pg_total_relation_size('{BIG}')) FROM {BIG}")
        big_rows, big_size = cur.fetchone()
    conn.close()
    log(f"scale: {BIG} has {big_rows} rows ({big_size}), filled in {time.monotonic() - started:.0f} s")
    return small_rows, big_rows, big_size


def load_latency(dsn: str, ids: list[str], labels: tuple[str, str], rounds: int) -> dict[str, Any]:
    """In-process ``PGStore.load`` of ``ids`` from the small and the big
    table (summaries under ``labels``), interleaved, on one shared connection."""
    shared = SimpleConnectionPool(1, 1, dsn)
    small = PGStore.from_pool(shared, create_table=False)
    large = PGStore.from_pool(shared, table=BIG, create_table=False)
    try:
        for store in (small, large):  # warm both
            for session_id in ids:
                assert store.load(session_id) is not None
        loads = {
            labels[0]: lambda i: small.load(ids[i % len(ids)]),
            labels[1]: lambda i: large.load(ids[i % len(ids)]),
        }
        return summarize(time_ops(loads, rounds))
    finally:
        small.close()
        large.close()
        shared.closeall()


def listing_latency(dsn: str, rounds: int) -> dict[str, Any]:
    """``PGStore.sessions_of`` of one user (about nine sessions) in :data:`BIG`,
    and the plan PostgreSQL runs for it."""
    shared = SimpleConnectionPool(1, 1, dsn)
    large = PGStore.from_pool(shared, table=BIG, create_table=False)
    try:
        users = [f"user-{n}" for n in range(1, 1001)]
        assert large.sessions_of(users[0])
        timed = summarize(
            time_ops({"sessions_of": lambda i: large.sessions_of(users[i % len(users)])}, rounds)
        )
        conn = shared.getconn()
        try:
            with conn.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, COSTS OFF) " + large._sql.sessions_of, {"userid": users[1]})
                plan = [line for (line,) in cur.fetchall()]
        finally:
            shared.putconn(conn)
        return {"sessions_of": timed["sessions_of"], "plan": plan}
    finally:
        large.close()
        shared.closeall()


def http_reads(
    env: dict[str, str], small: Backend, labels: tuple[str, str], tmp: Path, args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    """``/read`` through wrk on the small table's server and on a second
    pgstore server on the big one, alternately first; runs under ``labels``."""
    http: dict[str, list[dict[str, Any]]] = {labels[0]: [], labels[1]: []}
    with app_server("pgstore-big", {**env, "BENCH_TABLE": BIG}, tmp, args) as big_port:
        check_sessions("pgstore-big", big_port, small.cookies)
        wrk(big_port, "/read", small.cookie_file, args.warmup, args)
        for rep in range(args.reps):
            pairs = [(labels[0], small.port), (labels[1], big_port)]
            for label, port in pairs if rep % 2 == 0 else pairs[::-1]:
                result = measured(port, "/read", small.cookie_file, args)
                http[label].append(result)
                log(f"scale rep {rep + 1}/{args.reps} {label:>14s} {result['rps']:8.0f} req/s")
    return http


def run_scale(
    dsn: str, env: dict[str, str], pgstore: Backend, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Reads of the pgstore backend's sessions from a table of that many rows
    and from one of ``args.scale_rows`` rows: in-process latency and HTTP."""
    small_rows, big_rows, big_size = fill_big_table(dsn, args.scale_rows)
    labels = (f"{small_rows} rows", f"{big_rows} rows")
    signer = RotatingSigner([env["BENCH_SECRET"]])
    ids = [signer.loads(c.split("=", 1)[1].encode()) for c in pgstore.cookies]
    return {
        "small_rows": small_rows,
        "big_rows": big_rows,
        "big_size": big_size,
        "in_process": load_latency(dsn, ids, labels, args.micro_rounds * 2),
        "listing": listing_latency(dsn, args.micro_rounds),
        "http": http_reads(env, pgstore, labels, tmp, args),
    }
