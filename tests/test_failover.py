"""A PostgreSQL failover under traffic: a primary and a streaming replica
(``pgstore_replica_pair_factory``), the store on their multi-host DSN.

Writers save sessions the whole time, each remembering what the store
acknowledged; the primary is killed and the replica promoted (or the roles
switched over with the old primary fenced, or the old primary brought back
as a standby). Asserted: no app restart, failures only while no server takes
writes and only ``StoreUnavailable`` (never a driver error), writes back
within seconds, and, with the synchronous standby, every acknowledged write
on the new primary.
"""

import threading
import time

import pytest
import webtest
from pyramid.config import Configurator
from writers import Writers, lost_writes

from pyramid_pgstore import PGStore, StoreUnavailable


def assert_nothing_acknowledged_was_lost(writers, pair):
    lost = lost_writes(writers, pair.primary_dsn)
    assert lost == [], f"{len(lost)} of {len(writers.acknowledged)} acknowledged writes lost"


@pytest.fixture
def pair(pgstore_replica_pair_factory):
    return pgstore_replica_pair_factory(synchronous=True)


def test_kill_and_promote_errors_only_during_the_outage_and_loses_nothing_acknowledged(pair):
    with PGStore(pair.dsn, pool_max=6, pool_timeout=5, failover_timeout=5) as store:
        with Writers(store) as writers:
            time.sleep(0.5)
            killed = time.monotonic()
            pair.kill_primary()
            time.sleep(1.0)  # a failover tool takes about this long to decide
            pair.promote()
            promoted = time.monotonic()
            time.sleep(1.5)
        errors = writers.errors()
        assert {error for _, error in errors} <= {"StoreUnavailable", "PoolTimeout"}, errors
        assert all(killed - 0.1 <= started <= promoted + 0.5 for started, _ in errors), errors
        assert writers.succeeded_after(promoted + 1.0), "writes were not back a second after the promotion"
        # The writes of the outage waited for the new primary (failover_timeout) rather than failing.
        waited = max(seconds for _, seconds, _, _ in writers.log)
        assert waited < 5 + 1
        assert_nothing_acknowledged_was_lost(writers, pair)
        print(
            f"promoted {promoted - killed:.2f} s after the kill: {len(writers.log)} saves,"
            f" {len(errors)} failed, the slowest {waited:.2f} s, {len(writers.acknowledged)} acknowledged,"
            " 0 lost"
        )
        store.save("after", {"ok": True}, 60)  # the same store, no restart
        assert store.load("after").data == {"ok": True}


def test_a_switchover_that_fences_the_old_primary_moves_the_store_over(pair):
    """The fenced old primary stays up, read-only: pooled connections to it
    must be dropped, or every request would fail on it forever."""
    with PGStore(pair.dsn, pool_max=6, pool_timeout=5, failover_timeout=5) as store:
        store.save("before", {"n": 1}, 600)
        with Writers(store) as writers:
            time.sleep(0.5)
            started = time.monotonic()
            pair.switchover()
            done = time.monotonic()
            time.sleep(1.5)
        assert {error for _, error in writers.errors()} <= {"StoreUnavailable"}
        assert all(started - 0.1 <= moment <= done + 0.5 for moment, _ in writers.errors())
        assert writers.succeeded_after(done + 0.5)
        assert_nothing_acknowledged_was_lost(writers, pair)
        assert store.load("before").data == {"n": 1}
        assert store.stats()["discarded"] >= 1  # the fenced server's connections went


def test_the_old_primary_rejoining_as_a_standby_first_in_the_host_list_is_passed_over(pair):
    with PGStore(pair.dsn, pool_max=4, failover_timeout=5) as store:
        store.save("id-1", {"n": 1}, 600)
        pair.kill_primary()
        pair.promote()
        store.save("id-2", {"n": 2}, 600)  # through the new primary, second in the list
        with Writers(store, count=2) as writers:
            how = pair.rejoin_old_primary_as_replica()
            time.sleep(0.5)
        assert how in ("pg_rewind", "pg_basebackup")
        assert writers.errors() == []  # a standby coming up is not in the way of anyone
        assert store.load("id-1").data == {"n": 1} and store.load("id-2").data == {"n": 2}
        assert_nothing_acknowledged_was_lost(writers, pair)


def incr(request):
    request.session["n"] = request.session.get("n", 0) + 1
    return {"n": request.session["n"]}


def test_an_app_rides_through_a_failover_with_no_restart_and_its_sessions_kept(pair):
    settings = {"pgstore.dsn": pair.dsn, "pgstore.secret": "f" * 48, "pgstore.failover_timeout": "5"}
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        config.add_route("incr", "/incr")
        config.add_view(incr, route_name="incr", renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    assert app.get("/incr").json == {"n": 1}
    pair.kill_primary()
    promoter = threading.Timer(1.0, pair.promote)
    promoter.start()
    try:
        started = time.monotonic()
        response = app.get("/incr", expect_errors=True)  # waits for the new primary
        promoter.join()
        assert response.status_int == 200, response.text
        assert response.json == {"n": 2}  # the session written before the crash was on the standby
        assert time.monotonic() - started < 5
    finally:
        promoter.cancel()
    assert app.get("/incr").json == {"n": 3}


def test_without_waiting_for_a_writable_server_the_outage_fails_at_once_as_store_unavailable(pair):
    with PGStore(pair.dsn, pool_max=2, failover_timeout=0) as store:
        store.save("id-1", {"n": 1}, 600)
        pair.kill_primary()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.save("id-1", {"n": 2}, 600)
        assert time.monotonic() - started < 3
        pair.promote()
        store.save("id-1", {"n": 3}, 600)
        assert store.load("id-1").data == {"n": 3}
