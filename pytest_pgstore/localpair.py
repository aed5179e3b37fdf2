"""A local PostgreSQL primary and its streaming replica, for testing failover.

Test tooling like :mod:`pytest_pgstore.localdb` (which it builds on): the
``pgstore_replica_pair`` fixtures and ``bench/soak.py --failover`` run it.

:class:`ReplicaPair` runs two throwaway servers (:class:`Node`, a
:class:`~pytest_pgstore.localdb.LocalPostgres`; under root they run as the
unprivileged user): ``pgstore_node1`` starts as the primary and
``pgstore_node2`` is made from it with ``pg_basebackup`` and streams its
write-ahead log. Its methods do to the pair what happens to one in
production: a crash, a promotion, a fence, a planned switchover, the old
primary rejoining as a standby of the new one (``pg_rewind``).

The settings every node shares (:data:`SETTINGS`) are in its
``postgresql.conf``; those that belong to a role (``primary_conninfo``,
``synchronous_standby_names``, the fence's ``default_transaction_read_only``)
are in ``postgresql.auto.conf``, where ``ALTER SYSTEM`` changes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

from .localdb import LocalPostgres, free_port, hand_over, query

DEFAULT_DBNAME = "pgstore_failover"

# What streaming replication and pg_rewind need, and what makes a test pair cheap.
SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "5",
    "wal_keep_size": "128MB",  # write-ahead log a rejoining old primary may still need
    "hot_standby": "on",
    "wal_log_hints": "on",  # pg_rewind refuses a cluster without it (or data checksums)
    "full_page_writes": "on",  # pg_rewind needs it on the source
    "synchronous_commit": "on",
    "wal_retrieve_retry_interval": "100ms",  # a standby retries its primary quickly
    "wal_receiver_status_interval": "1s",
    "fsync": "off",  # a test server never survives a power cut
    "max_connections": "40",
    "shared_buffers": "16MB",
}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *nodes: LocalPostgres) -> None:
    """Call ``predicate`` until it returns something true (a connection error is false).

    :raises TimeoutError: after ``timeout`` seconds, naming ``what``, with ``nodes``' logs."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg2.OperationalError):
            if predicate():
                return
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {node.logfile}:\n{node.log_tail()}" for node in nodes)
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{logs}")
        time.sleep(0.02)


def _quote(value: str) -> str:
    """A string value for a PostgreSQL configuration file."""
    return "'" + value.replace("'", "''") + "'"


class Node(LocalPostgres):
    """One server of a pair: a quiet :class:`LocalPostgres` with a ``name`` (its
    ``application_name`` as a standby) and ``conf``, the settings written into its
    ``postgresql.conf`` by :meth:`init`. No Unix-domain socket, only TCP: in a deep
    pytest directory the socket's path may be longer than the 107 bytes allowed."""

    def __init__(self, base: Path, name: str, conf: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(base, settings={"unix_socket_directories": "''"}, log=lambda message: None, **kwargs)
        self.name = name
        self.conf = dict(conf or {})

    initdb_options = ("--no-sync",)  # throwaway servers: a crash of the machine loses nothing of value

    def __repr__(self) -> str:
        return f"<Node {self.name} on port {self.port}>"

    def init(self) -> None:
        """Create the cluster unless it exists (``initdb --no-sync``), with ``conf``
        in its ``postgresql.conf``: in the file, not on the command line, they also
        hold when ``pg_rewind`` runs the server alone to finish crash recovery."""
        if self.exists:
            return
        super().init()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {_quote(value)}\n" for name, value in self.conf.items())

    def query(self, sql: str, params: Any = None, dbname: str = "postgres") -> list[tuple]:
        """The rows of one statement, run on a new connection in autocommit mode ([] for none)."""
        return query(self.dsn(dbname), sql, params, connect_timeout=5, application_name="pgstore_replication")

    def value(self, sql: str, params: Any = None) -> Any:
        """The first column of the first row of ``sql`` (on the ``postgres`` database)."""
        return self.query(sql, params)[0][0]

    def writable(self) -> bool:
        """Whether a new session may write: out of recovery (``pg_is_in_recovery()``
        false), and not fenced."""
        return self.value("SELECT current_setting('transaction_read_only')") == "off"

    def wait_writable(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`writable`; :raises TimeoutError: not in ``timeout`` seconds."""
        wait_until(self.writable, timeout, f"{self.name} to accept writes", self)

    def promote(self, timeout: float = 30.0) -> None:
        """``pg_ctl promote -w``, then wait until it accepts writes."""
        self.run("pg_ctl", "promote", "-w", "-t", str(int(timeout)), "-D", self.datadir, timeout=timeout + 5)
        self.wait_writable(timeout)

    def kill(self) -> None:
        """Crash it: ``pg_ctl stop -m immediate`` (no shutdown checkpoint, no more
        write-ahead log sent to standbys). Nothing happens if it is not running."""
        self.stop("immediate")

    def conninfo_for(self, application_name: str) -> str:
        """A connection string to this node naming ``application_name``, for a
        standby's ``primary_conninfo``."""
        return f"host={self.host} port={self.port} user={self.user} application_name={application_name}"

    def write_file(self, name: str, text: str) -> None:
        """Write ``name`` in the data directory, owned like the directory, mode 0600."""
        path, owner = self.data / name, self.data.stat()
        path.write_text(text)
        os.chown(path, owner.st_uid, owner.st_gid)
        os.chmod(path, 0o600)

    def set_auto_conf(self, **settings: str | None) -> None:
        """Set settings (to a value) or remove them (None) in ``postgresql.auto.conf``,
        the file of ``ALTER SYSTEM``. Only while the server is stopped."""
        if self.running:
            raise RuntimeError(f"{self.name} is running: use ALTER SYSTEM")
        path = self.data / "postgresql.auto.conf"
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.split("=", 1)[0].strip() not in settings]
        added = [f"{name} = {_quote(value)}" for name, value in settings.items() if value is not None]
        self.write_file(path.name, "\n".join(kept + added) + "\n")

    def make_standby_of(self, upstream: Node) -> None:
        """While stopped, make it start as a hot standby of ``upstream``: a
        ``standby.signal``, a ``primary_conninfo`` naming this node, and no
        ``synchronous_standby_names`` or fence left from an earlier role."""
        self.write_file("standby.signal", "")
        roles: dict[str, str | None] = dict(
            synchronous_standby_names=None, default_transaction_read_only=None
        )
        self.set_auto_conf(primary_conninfo=upstream.conninfo_for(self.name), **roles)


class ReplicaPair:
    """A primary (``primary``) and a hot standby streaming from it (``replica``).

    :param base: the directory for the nodes' directories (``node1``, ``node2``).
    :param synchronous: name the replica in the primary's
        ``synchronous_standby_names``: a commit returns once the replica has
        flushed it (``synchronous_commit = on``; it is readable there once
        replayed, which only ``remote_apply`` waits for).
    :param dbname: a database made on the primary before the base backup.
    :param settings: server settings added to (or replacing) :data:`SETTINGS`.
    :param run_as: as for :class:`~pytest_pgstore.localdb.LocalPostgres`.
    :param bindir: as for :class:`~pytest_pgstore.localdb.LocalPostgres`.

    ``nodes`` is both in their first order (the primary first); ``timings``, the
    seconds the last ``start``, ``promote``, ``switchover`` and ``rejoin`` took;
    ``rejoined_with``, ``rewind_error``: how the last rejoin went."""

    def __init__(
        self,
        base: Path,
        *,
        synchronous: bool = False,
        dbname: str = DEFAULT_DBNAME,
        settings: dict[str, str] | None = None,
        run_as: str = "",
        bindir: str = "",
    ) -> None:
        ports = [free_port()]
        while len(ports) < 2:
            ports += [port for port in [free_port()] if port not in ports]
        options: dict[str, Any] = dict(conf={**SETTINGS, **(settings or {})}, run_as=run_as, bindir=bindir)
        self.nodes = tuple(
            Node(Path(base) / f"node{n}", f"pgstore_node{n}", port=port, **options)
            for n, port in zip((1, 2), ports, strict=True)
        )
        self.primary, self.replica = self.nodes
        self.synchronous = synchronous
        self.dbname = dbname
        self.timings: dict[str, float] = {}
        self.rejoined_with = self.rewind_error = ""
        self._diverged = False  # promoted since the last rejoin: ``replica`` is the old primary

    @property
    def dsn(self) -> str:
        """Both nodes (in ``nodes`` order) for whichever accepts writes: libpq tries
        each host and keeps the first whose session is not read-only."""
        first, second = self.nodes
        hosts, ports = f"{first.host},{second.host}", f"{first.port},{second.port}"
        attrs = "target_session_attrs=read-write"
        return f"host={hosts} port={ports} user={first.user} dbname={self.dbname} {attrs}"

    @property
    def primary_dsn(self) -> str:
        """The database on the current primary."""
        return self.primary.dsn(self.dbname)

    @property
    def replica_dsn(self) -> str:
        """The database on the current replica (after a promotion: the old primary)."""
        return self.replica.dsn(self.dbname)

    def start(self, timeout: float = 30.0) -> None:
        """Start the primary, make ``dbname`` on it, make the replica with
        ``pg_basebackup`` and start it; return once it streams (and, when
        ``synchronous``, once the primary waits for it). Whatever started is
        stopped again if a step fails."""
        started = time.monotonic()
        try:
            self.primary.start()
            self.primary.create_database(self.dbname)
            self._base_backup(self.replica, self.primary)
            self.replica.start()
            self._attach(self.replica, timeout)
        except BaseException:
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                self.stop()
            raise
        self.timings["start"] = time.monotonic() - started

    def stop(self) -> None:
        """Stop both nodes (``-m immediate``: nothing of them is kept), the second
        even if the first will not stop; raises what ``pg_ctl`` raised, if anything."""
        with contextlib.ExitStack() as stops:
            for node in self.nodes:
                stops.callback(node.stop, "immediate")

    def _base_backup(self, target: Node, source: Node) -> None:
        """Replace ``target``'s data directory with a base backup of ``source``,
        made to stream from it."""
        hand_over(target.base, target.run_as)
        shutil.rmtree(target.data, ignore_errors=True)
        conninfo = source.conninfo_for(target.name)
        target.run("pg_basebackup", "-D", target.datadir, "-d", conninfo, "-c", "fast", "-N")
        target.make_standby_of(source)

    def _attach(self, standby: Node, timeout: float) -> None:
        """Wait until ``standby`` streams from the primary; when ``synchronous``,
        name it in ``synchronous_standby_names`` and wait until it is ``sync``."""
        state = "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s"

        def streaming(sync_state: str = "") -> bool:
            rows = self.primary.query(state, (standby.name,))
            return any(row[0] == "streaming" and sync_state in ("", row[1]) for row in rows)

        nodes = (self.primary, standby)
        wait_until(streaming, timeout, f"{standby.name} to stream from {self.primary.name}", *nodes)
        if self.synchronous:
            self.primary.query("ALTER SYSTEM SET synchronous_standby_names = %s", (standby.name,))
            self.primary.query("SELECT pg_reload_conf()")
            wait_until(lambda: streaming("sync"), timeout, f"{standby.name} to be synchronous", *nodes)

    def current_lsn(self) -> str:
        """``pg_current_wal_lsn()`` of the primary: where its write-ahead log ends."""
        return str(self.primary.value("SELECT pg_current_wal_lsn()"))

    def replayed(self, lsn: str) -> bool:
        """Whether the replica has replayed the log up to ``lsn`` (``pg_last_wal_replay_lsn()``)."""
        return bool(self.replica.value("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)))

    def lag(self) -> int:
        """Bytes of the primary's log the replica has not replayed yet."""
        lsn = self.current_lsn()
        return int(self.replica.value("SELECT pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn())", (lsn,)))

    def wait_for_replay(self, lsn: str | None = None, timeout: float = 30.0) -> None:
        """Wait until the replica has replayed up to ``lsn`` (default: all the
        primary wrote so far); :raises TimeoutError: not in ``timeout`` seconds."""
        target = lsn or self.current_lsn()
        wait_until(lambda: self.replayed(target), timeout, f"replay of {target}", *self.nodes)

    def kill_primary(self) -> None:
        """Crash the primary (``Node.kill()``). The replica keeps waiting for it."""
        self.primary.kill()

    def promote(self, timeout: float = 30.0) -> None:
        """Promote the replica (``pg_ctl promote -w``), wait until it accepts writes,
        swap ``primary`` and ``replica``. Until :meth:`rejoin_old_primary_as_replica`,
        ``replica`` is the old primary (dead, fenced, or writable: split brain is the
        caller's choice), and a synchronous pair's new primary waits for no standby."""
        started = time.monotonic()
        self.replica.promote(timeout)
        self.primary, self.replica = self.replica, self.primary
        self._diverged = True
        self.timings["promote"] = time.monotonic() - started

    def fence_primary(self, end_open_transactions: bool = False, timeout: float = 10.0) -> None:
        """Make the running primary read-only, as failover tools do to an old
        primary: ``ALTER SYSTEM SET default_transaction_read_only = on``, a reload,
        and a wait until new sessions see it. Connections stay: each transaction
        they begin from their next statement on is read-only (a write raises
        ``ReadOnlySqlTransaction``). A transaction already open stays read-write,
        unless ``end_open_transactions`` terminates its backend. A client may
        still ``BEGIN READ WRITE``: this is a fence, not a wall."""
        self.primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
        self.primary.query("SELECT pg_reload_conf()")
        fenced = "SELECT current_setting('default_transaction_read_only') = 'on'"
        wait_until(lambda: self.primary.value(fenced), timeout, "the fence", self.primary)
        if end_open_transactions:
            self.primary.query(
                "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity WHERE xact_start IS NOT NULL"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (int(timeout * 1000),),
            )

    def switchover(self, timeout: float = 30.0, rejoin: bool = False) -> None:
        """A planned failover that loses nothing: fence the primary (ending its
        open transactions), wait until the replica has replayed all the primary
        wrote, promote the replica. ``primary`` and ``replica`` swap; the old
        primary stays up, fenced, and rejoins as a standby now if ``rejoin``
        (else see :meth:`rejoin_old_primary_as_replica`).

        :raises RuntimeError: the replica does not stream (promoted, not rejoined)."""
        if self._diverged:
            raise RuntimeError("the replica does not stream from the primary: rejoin it first")
        started = time.monotonic()
        self.fence_primary(end_open_transactions=True, timeout=timeout)
        self.wait_for_replay(timeout=timeout)
        self.promote(timeout)
        self.timings["switchover"] = time.monotonic() - started
        if rejoin:
            self.rejoin_old_primary_as_replica(timeout)

    def rejoin_old_primary_as_replica(self, timeout: float = 60.0) -> str:
        """After a promotion, make the old primary (now ``replica``) a standby of the
        new primary: stop it, ``pg_rewind`` it to the new timeline (dropping what it
        wrote that the new primary never got) or, if that fails, replace it with a
        new base backup; start it; return ``"pg_rewind"`` or ``"pg_basebackup"`` once
        it streams (synchronous again when the pair is).

        :raises RuntimeError: no promotion since the pair was made or last rejoined."""
        if not self._diverged:
            raise RuntimeError("the replica already streams from the primary: promote first")
        started = time.monotonic()
        old, new = self.replica, self.primary
        old.stop()
        new.query("CHECKPOINT")  # pg_rewind reads the new timeline from the source's pg_control
        try:
            old.run("pg_rewind", "-N", "-D", old.datadir, f"--source-server={new.dsn()}", timeout=timeout)
            old.make_standby_of(new)
            self.rejoined_with, self.rewind_error = "pg_rewind", ""
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self._base_backup(old, new)
            self.rejoined_with, self.rewind_error = "pg_basebackup", str(exc)
        old.start()
        self._attach(old, timeout)
        self._diverged = False
        self.timings["rejoin"] = time.monotonic() - started
        return self.rejoined_with
