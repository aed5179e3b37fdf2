"""``--pgstore-citus``: the test database on a Citus cluster, the sessions table distributed.

``--pgstore-dsn`` names the coordinator's maintenance database, in which the
cluster's nodes are registered (``citus_set_coordinator_host``,
``citus_add_node``). Citus keeps its metadata per database, so each test
database is made a Citus database of its own: the ``citus`` extension on the
coordinator and on every worker (which gets the database too, unless
``citus.enable_create_database_propagation`` already made it), and the same
nodes registered. Every table a store prepares or checks is then distributed
by ``key`` before the store's first statement (a
:data:`pyramid_pgstore.testing.table_hooks` hook), as an operator would with
``create_distributed_table`` before starting the apps.

Workers are reached at the host and port the coordinator knows them by, with
the DSN's other parameters (user, password).
"""

from __future__ import annotations

import time

from psycopg2.extensions import make_dsn, parse_dsn

from pyramid_pgstore.testing import Query

from .localdb import query


def _nodes(admin_dsn: str) -> tuple[tuple[str, int] | None, list[tuple[str, int]]]:
    """The coordinator's own entry (None if it has none) and the primary workers."""
    try:
        found = query(
            admin_dsn,
            "SELECT groupid = 0, nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary'"
            " AND isactive ORDER BY groupid",
        )
    except Exception as exc:
        raise RuntimeError(f"--pgstore-citus: --pgstore-dsn is not a Citus coordinator ({exc})") from None
    coordinator = next(((host, port) for own, host, port in found if own), None)
    workers = [(host, port) for own, host, port in found if not own]
    if not workers:
        raise RuntimeError("--pgstore-citus: the coordinator has no workers (citus_add_node)")
    return coordinator, workers


def _on(dsn: str, host: str, port: int, dbname: str) -> str:
    return make_dsn(dsn, host=host, port=port, dbname=dbname)


def create_database(admin_dsn: str, dbname: str) -> None:
    """Create ``dbname`` on the coordinator and its workers, as a Citus
    database with the coordinator's nodes."""
    coordinator, workers = _nodes(admin_dsn)
    query(admin_dsn, f'CREATE DATABASE "{dbname}"')
    maintenance = parse_dsn(admin_dsn).get("dbname", "postgres")
    for host, port in workers:
        worker_admin = _on(admin_dsn, host, port, maintenance)
        if not query(worker_admin, "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)):
            query(worker_admin, f'CREATE DATABASE "{dbname}"')
        query(_on(admin_dsn, host, port, dbname), "CREATE EXTENSION IF NOT EXISTS citus")
    dsn = make_dsn(admin_dsn, dbname=dbname)
    query(dsn, "CREATE EXTENSION IF NOT EXISTS citus")
    if coordinator is not None:
        query(dsn, "SELECT citus_set_coordinator_host(%s, %s)", coordinator)
    for worker in workers:  # each in a transaction of its own, as Citus wants
        query(dsn, "SELECT citus_add_node(%s, %s)", worker)


def drop_database(admin_dsn: str, dbname: str) -> None:
    """Drop ``dbname`` on the coordinator and on its workers."""
    _, workers = _nodes(admin_dsn)
    maintenance = parse_dsn(admin_dsn).get("dbname", "postgres")
    for dsn in [admin_dsn, *(_on(admin_dsn, host, port, maintenance) for host, port in workers)]:
        _drop(dsn, dbname)


def _drop(admin_dsn: str, dbname: str) -> None:
    """Drop the database, waiting up to 10 s for a worker's backends the
    coordinator's just closed connections leave behind (``WITH (FORCE)``
    on the coordinator meets them on the worker while they exit)."""
    import psycopg2.errors

    deadline = time.monotonic() + 10
    while True:
        try:
            query(admin_dsn, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            return
        except psycopg2.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def distribute(run: Query, quoted_table: str) -> bool:
    """The table hook: distribute the store's table by ``key`` if its
    database has Citus and Citus does not manage it yet; True if it did.
    Rows already in it move to the shards."""
    params = {"table": quoted_table}
    if not run("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL", params)[0][0]:
        return False  # a server of a test's own (a replica pair), not the Citus cluster
    # Under the table's schema lock (see pyramid_pgstore.schema.locked):
    # stores starting together distribute it once, never during an upgrade.
    done = run(
        "SELECT pg_advisory_xact_lock(hashtext(%(table)s));"
        " SELECT create_distributed_table(%(table)s, 'key'),"
        " truncate_local_data_after_distributing_table(%(table)s)"
        " WHERE NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = %(table)s::regclass)",
        params,
    )
    return bool(done)
