"""The store on a real Patroni cluster: etcd and three PostgreSQL nodes
(``pgstore_patroni_cluster``), ``synchronous_mode: true``, ``ttl`` 20 s (Patroni's
minimum) and ``loop_wait`` 2 s; the store on the three hosts with
``target_session_attrs=read-write``.

Writers save sessions through a planned ``patronictl switchover``, the leader
killed (its Patroni and its postmaster, ``SIGKILL``) and its rejoin as a
standby (Patroni rewinds it). Asserted: the app sees only
``StoreUnavailable``, and only while no node takes writes; a crash takes the
writes away for about the ``ttl`` (the killed leader's key must expire before
another node may take over), so a store waiting the default 5 s fails
requests meanwhile, each after waiting those 5 s, while one waiting longer
than the ``ttl`` fails none; no acknowledged write is lost. Then
``synchronous_mode_strict`` with no standby left: commits block until the
store's ``commit_timeout`` cancels them, and the write stays on the primary.
Then the leader's Patroni killed alone, its PostgreSQL left running beside
the promoted standby: writes there fail after ``commit_timeout``, and
nothing acknowledged is lost.

Slow (three clusters, two to three minutes): marked ``patroni`` (``-m "not patroni"`` leaves it out;
``.ci/wheel-suite`` does, ``make test`` runs it). Skipped without etcd and Patroni
(``.ci/need-patroni`` installs them as root).
"""

import time

import pytest
from writers import Writers, lost_writes, stored_keys

from pyramid_pgstore import PGStore, StoreUnavailable
from pyramid_pgstore.records import storage_key

pytestmark = pytest.mark.patroni

TTL, LOOP_WAIT = 20, 2
PROMOTION = 15  # seconds a loaded 2-core machine may take to promote once the key expired


def report(name, figures):
    failed = ", ".join(f"{count} {kind}" for kind, count in figures["failed"].items()) or "none"
    print(
        f"{name}: {figures['requests']} saves, failed: {failed}; no save acknowledged for"
        f" {figures['outage']:.2f} s; the slowest took {figures['slowest']:.2f} s"
    )


def test_a_switchover_a_killed_leader_and_its_rejoin_lose_nothing_acknowledged(pgstore_patroni_cluster):
    cluster = pgstore_patroni_cluster
    # The default failover_timeout (5 s), and one longer than the ttl plus a promotion.
    waiting = PGStore(cluster.dsn, pool_max=6, failover_timeout=5)
    riding = PGStore(cluster.dsn, pool_max=4, failover_timeout=TTL + PROMOTION, pool_timeout=60)
    with waiting, riding, Writers(waiting, 4, "waiting") as short, Writers(riding, 2, "riding") as long:
        time.sleep(1.0)
        events = {}
        started = time.monotonic()
        cluster.switchover()
        events["switchover"] = (started, time.monotonic())
        cluster.wait_until_healthy()  # the old leader back as a standby
        time.sleep(1.0)
        started = time.monotonic()
        killed = cluster.kill_leader()
        cluster.wait_for_failover(killed)
        events["kill"] = (started, time.monotonic())
        time.sleep(1.0)
        started = time.monotonic()
        cluster.rejoin(killed)
        events["rejoin"] = (started, time.monotonic())
        time.sleep(1.0)
    for name, (start, end) in events.items():
        for writers in (short, long):
            report(f"{name} ({end - start:.1f} s), {writers.name}", writers.during(start, end + 1.0))

    # Failures: StoreUnavailable only, only while no node took writes, each after the full wait.
    _, kill, rejoin = events.values()
    assert {error for _, error in short.errors()} <= {"StoreUnavailable"}, short.errors()
    outside = [
        moment for moment, _ in short.errors() if not any(s - 0.1 <= moment <= e for s, e in events.values())
    ]
    assert outside == [], "saves failed while a node took writes"
    failed_waits = [seconds for _, seconds, key, _ in short.log if key is None]
    assert all(seconds >= 5 - 0.2 for seconds in failed_waits), failed_waits
    # A crash: no node takes writes until the killed leader's key expires (ttl seconds
    # after its last renewal, one per loop_wait) and another is promoted.
    crash = short.during(*kill)
    assert TTL - LOOP_WAIT - 1 <= crash["outage"] <= TTL + LOOP_WAIT + PROMOTION, crash
    assert crash["failed"].get("StoreUnavailable", 0) > 0  # 5 s is shorter than the outage
    # Waiting longer than the ttl (and a promotion) rides through all of it.
    assert long.errors() == []
    assert long.during(*kill)["slowest"] > 5  # it did wait
    # The rejoin costs nothing.
    assert short.during(*rejoin)["failed"] == {}
    # Nothing acknowledged is lost, by either store.
    leader = cluster.leader_dsn()
    for writers in (short, long):
        assert lost_writes(writers, leader) == [], f"acknowledged writes of {writers.name} lost"
        print(f"{writers.name}: {len(writers.log)} saves, {len(writers.acknowledged)} acknowledged, 0 lost")
    assert short.succeeded_after(rejoin[1])


def test_synchronous_mode_strict_blocks_commits_until_commit_timeout_and_keeps_the_write(
    pgstore_patroni_cluster_factory,
):
    """With no synchronous standby left, Patroni's strict mode does not refuse
    writes: PostgreSQL holds every commit. The store cancels it after
    ``commit_timeout``; the request fails, and the write is committed on the
    primary all the same (and replicated once a standby returns)."""
    cluster = pgstore_patroni_cluster_factory(nodes=2, synchronous_mode_strict=True)
    leader = cluster.leader()
    standby = next(m.name for m in cluster.members if m.name != leader)
    with PGStore(cluster.dsn, pool_max=2, commit_timeout=2) as store:
        store.save("before", {"n": 1}, 600)
        cluster.kill_member(standby)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="not confirmed by a synchronous standby"):
            store.save("blocked", {"n": 2}, 600)
        assert 2 <= time.monotonic() - started < 2 + 3
        assert store.load("before").data == {"n": 1}  # reads go on
        assert stored_keys(cluster.leader_dsn(), ["blocked"]) == {storage_key("blocked")}
        assert store.load("blocked").data == {"n": 2}  # committed, though the request failed
        cluster.rejoin(standby)
        store.save("after", {"n": 3}, 600)
        assert store.load("after").data == {"n": 3}


def test_a_dead_patroni_whose_postgresql_runs_on_fails_writes_and_loses_nothing_acknowledged(
    pgstore_patroni_cluster,
):
    """Patroni killed alone on the leader (no watchdog to reset the node): its
    key expires, its synchronous standby is promoted, and the old primary runs
    on, writable, first in the DSN's host list. Its commits wait for a standby
    that no longer streams from it: every write there fails after
    ``commit_timeout``, none is acknowledged, so none is lost; writes come back
    once that server stops."""
    cluster = pgstore_patroni_cluster
    old = cluster.leader()
    assert old == cluster.members[0].name  # first in cluster.dsn: libpq tries it first
    with PGStore(cluster.dsn, pool_max=6, failover_timeout=5, commit_timeout=2) as store:
        with Writers(store, 2, "split") as writers:
            time.sleep(1.0)
            cluster.kill_patroni(old)
            new = cluster.wait_for_failover(old)
            promoted = time.monotonic()
            time.sleep(5.0)  # the old primary still answers, writable
            stopped = time.monotonic()
            cluster.kill_member(old)
            time.sleep(2.0)
        print(f"split: {writers.during(promoted, stopped)}")
        # The saves made while both ran (a save met by the stop is retried on the new primary).
        after_promotion = [entry for entry in writers.log if promoted < entry[0] and sum(entry[:2]) < stopped]
        assert after_promotion, "no save was made while both primaries ran"
        assert all(error == "StoreUnavailable" for _, _, _, error in after_promotion), after_promotion
        assert all(seconds >= 2 for _, seconds, _, _ in after_promotion), after_promotion
        assert writers.succeeded_after(stopped + 1)
        assert lost_writes(writers, cluster.member(new).dsn(cluster.dbname)) == []
