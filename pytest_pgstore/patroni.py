"""A throwaway Patroni cluster: etcd and three PostgreSQL nodes on loopback.

Test tooling (the ``pgstore_patroni_cluster`` fixture, ``bench/soak.py
--failover patroni-kill``), never used by the store. :class:`PatroniCluster`
starts one etcd member and one Patroni per node in a directory, every port a
free one on 127.0.0.1, with ``synchronous_mode: true`` by default; then does
to the cluster what happens to one in production: a planned ``patronictl
switchover``, the leader killed (its Patroni and its postmaster, ``SIGKILL``),
the killed node's Patroni started again to rejoin as a standby (Patroni
rewinds it).

What it needs, found by :func:`find_programs`: Debian's ``etcd`` (package
``etcd-server``), and ``patroni`` and ``patronictl`` installed from PyPI
(``patroni[etcd3]`` with ``psycopg2-binary``). ``.ci/need-patroni`` installs
them, Patroni in a virtualenv of Debian's ``/usr/bin/python3`` under
``/opt/pgstore-patroni``, where the ``postgres`` user can run it.

PostgreSQL refuses to run as root: started by root, every Patroni runs as
the unprivileged user of :func:`~pytest_pgstore.localdb.run_as_user`, which
is given the nodes' directories; etcd runs as whoever started the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from .localdb import find_pg_ctl, free_port, hand_over, query, run_as_user

PATRONI_ENV = "PGSTORE_PATRONI"  # the patroni program (patronictl beside it)
ETCD_ENV = "PGSTORE_ETCD"  # the etcd program
VENV = Path("/opt/pgstore-patroni")  # where .ci/need-patroni installs Patroni
DEFAULT_DBNAME = "pgstore_patroni"
SCOPE = "pgstore"

# Server settings every node shares (Patroni keeps them in etcd): what a
# cheap throwaway node needs. Patroni adds what replication needs.
SETTINGS: dict[str, Any] = {
    "max_connections": 60,
    "shared_buffers": "16MB",
    "wal_keep_size": "128MB",
    "wal_log_hints": "on",  # pg_rewind needs it (or data checksums)
    "fsync": "off",  # a test node never survives a power cut; SIGKILL loses nothing
    "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "500ms",
}


class PatroniMissing(RuntimeError):
    """etcd or Patroni is not installed; the message says what to install."""


@dataclass(frozen=True)
class Programs:
    etcd: str
    patroni: str
    patronictl: str


def find_programs(patroni: str = "", etcd: str = "") -> Programs:
    """etcd, patroni and patronictl: as given, else ``$PGSTORE_ETCD`` and
    ``$PGSTORE_PATRONI``, else ``/opt/pgstore-patroni/bin`` (Patroni), else PATH.

    :raises PatroniMissing: one is missing, with what to install.
    """
    patroni = patroni or os.environ.get(PATRONI_ENV, "")
    if not patroni:
        installed = VENV / "bin" / "patroni"
        patroni = str(installed) if os.access(installed, os.X_OK) else shutil.which("patroni") or ""
    etcd = etcd or os.environ.get(ETCD_ENV, "") or shutil.which("etcd") or ""
    patronictl = os.path.join(os.path.dirname(patroni), "patronictl") if patroni else ""
    missing = [
        f"{name} ({hint})"
        for name, path, hint in (
            ("etcd", etcd, "Debian/Ubuntu: apt-get install etcd-server"),
            ("patroni", patroni, "pip install 'patroni[etcd3]' psycopg2-binary, or .ci/need-patroni as root"),
            ("patronictl", patronictl, "installed with patroni"),
        )
        if not path or not os.access(path, os.X_OK)
    ]
    if missing:
        raise PatroniMissing(f"not installed: {', '.join(missing)}")
    return Programs(etcd, patroni, patronictl)


# Run by PatroniCluster._start_reaper: python -c _REAPER OWNER_PID BASE. Once the
# owner is gone, SIGKILL every process whose command line names BASE (etcd, the
# Patroni processes, their postmasters; the backends follow their postmaster).
_REAPER = """
import os, signal, sys, time
owner, base = int(sys.argv[1]), os.fsencode(sys.argv[2].rstrip("/") + "/")
while True:
    time.sleep(1)
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        break
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if int(pid) == os.getpid():
            continue
        if base in open(f"/proc/{pid}/cmdline", "rb").read():
            os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
"""


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        ports += [port for port in [free_port()] if port not in ports]
    return ports


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Member:
    """One node: its Patroni (REST API on ``rest_port``) and its PostgreSQL (``port``)."""

    name: str
    base: Path
    port: int
    rest_port: int
    process: subprocess.Popen | None = None

    host = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def config(self) -> Path:
        return self.base / "patroni.yml"

    @property
    def logfile(self) -> Path:
        return self.base / "patroni.log"

    @property
    def running(self) -> bool:
        """Whether its Patroni runs (started, not killed, not exited)."""
        return self.process is not None and self.process.poll() is None

    @property
    def postmaster_pid(self) -> int | None:
        """The pid of its postmaster, from ``postmaster.pid``, while it runs."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def rest(self, path: str, timeout: float = 2.0) -> Any:
        """GET ``path`` of its REST API, decoded; raises OSError when it does not answer."""
        url = f"http://{self.host}:{self.rest_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 20) -> str:
        if not self.logfile.exists():
            return ""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])


class PatroniCluster:
    """etcd and ``nodes`` Patroni nodes in ``base``, on free loopback ports.

    :param nodes: how many PostgreSQL nodes, each with its Patroni.
    :param ttl: Patroni's, in seconds (its default 30, its minimum 20). A
        killed leader's key expires ``ttl`` seconds after its last renewal
        (one per ``loop_wait``).
    :param loop_wait: Patroni's, in seconds (its default 10, its minimum 1).
    :param retry_timeout: Patroni's, in seconds (its default 10, its minimum
        3). Patroni needs ``loop_wait + 2 * retry_timeout <= ttl``.
    :param synchronous_mode: Patroni's.
    :param synchronous_mode_strict: Patroni's.
    :param dbname: a database made on the leader once the cluster is up.
    :param settings: server settings added to (or replacing) :data:`SETTINGS`.
    :param run_as: the user that runs the servers, under root.
    :param bindir: where PostgreSQL's programs are (found when empty).
    :param patroni: the patroni program (found when empty).
    :param etcd: the etcd program (found when empty).

    ``members`` are the nodes (``pgstore1``...); ``timings`` the seconds the
    last ``start``, ``switchover``, ``failover`` (the kill to a new writable
    leader) and ``rejoin`` took.

    :raises PatroniMissing: etcd or Patroni is not installed.
    """

    def __init__(
        self,
        base: Path,
        *,
        nodes: int = 3,
        ttl: int = 20,
        loop_wait: int = 2,
        retry_timeout: int = 5,
        synchronous_mode: bool = True,
        synchronous_mode_strict: bool = False,
        dbname: str = DEFAULT_DBNAME,
        settings: dict[str, Any] | None = None,
        run_as: str = "",
        bindir: str = "",
        patroni: str = "",
        etcd: str = "",
    ) -> None:
        if loop_wait + 2 * retry_timeout > ttl:
            raise ValueError("Patroni needs loop_wait + 2 * retry_timeout <= ttl")
        self.programs = find_programs(patroni, etcd)
        self.base = Path(base).resolve()
        self.bindir = os.path.dirname(find_pg_ctl(bindir))
        self.run_as = run_as_user(run_as)
        self.dbname = dbname
        self.dcs = {
            "ttl": ttl,
            "loop_wait": loop_wait,
            "retry_timeout": retry_timeout,
            "synchronous_mode": synchronous_mode,
            "synchronous_mode_strict": synchronous_mode_strict,
            "postgresql": {"use_pg_rewind": True, "parameters": {**SETTINGS, **(settings or {})}},
        }
        ports = _free_ports(2 * nodes + 2)
        self.etcd_port, self.etcd_peer_port = ports[:2]
        self.members = [
            Member(f"pgstore{n}", self.base / f"pgstore{n}", ports[2 * n], ports[2 * n + 1])
            for n in range(1, nodes + 1)
        ]
        self.etcd: subprocess.Popen | None = None
        self.reaper: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}
        self._killed_at = 0.0

    def __repr__(self) -> str:
        return f"<PatroniCluster {', '.join(f'{m.name}:{m.port}' for m in self.members)}>"

    # -- connection strings -------------------------------------------------

    @property
    def dsn(self) -> str:
        """Every node, for whichever accepts writes (libpq tries each host in turn)."""
        hosts = ",".join(m.host for m in self.members)
        ports = ",".join(str(m.port) for m in self.members)
        return f"host={hosts} port={ports} user=postgres dbname={self.dbname} target_session_attrs=read-write"

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def leader_dsn(self) -> str:
        """The database on the current leader (waits for one)."""
        return self.member(self.wait_for_leader()).dsn(self.dbname)

    # -- state --------------------------------------------------------------

    def state(self) -> list[dict[str, Any]]:
        """Patroni's view of the members (``GET /cluster`` of the first node
        that answers): name, role (``leader``, ``sync_standby``, ``replica``),
        state (``running``, ``streaming``, ...), timeline, lag. [] when none answers."""
        for member in self.members:
            if member.running:
                with contextlib.suppress(OSError, ValueError):
                    return list(member.rest("/cluster")["members"])
        return []

    def leader(self) -> str | None:
        """The running leader's name, if there is one now."""
        return next(
            (m["name"] for m in self.state() if m.get("role") == "leader" and m.get("state") == "running"),
            None,
        )

    def _writable(self, name: str) -> bool:
        try:
            answer = query(self.member(name).dsn(), "SELECT NOT pg_is_in_recovery()", connect_timeout=2)
        except psycopg2.Error:  # down, starting, or refusing: not yet
            return False
        return bool(answer[0][0])

    def wait_for_leader(self, timeout: float = 60.0, other_than: str = "") -> str:
        """Wait until a leader other than ``other_than`` runs and takes writes; its name."""

        def found() -> str | None:
            name = self.leader()
            return name if name and name != other_than and self._writable(name) else None

        return self._wait(found, timeout, f"a leader{f' other than {other_than}' if other_than else ''}")

    def healthy(self) -> bool:
        """A running leader, every other member streaming from it, one a synchronous standby
        (in synchronous mode)."""
        members = self.state()
        if len(members) != len(self.members) or not any(m.get("role") == "leader" for m in members):
            return False
        standbys = [m for m in members if m.get("role") != "leader"]
        if not all(m.get("state") == "streaming" for m in standbys):
            return False
        return not self.dcs["synchronous_mode"] or any(m.get("role") == "sync_standby" for m in standbys)

    def wait_until_healthy(self, timeout: float = 120.0) -> None:
        self._wait(self.healthy, timeout, "every member streaming from the leader")

    def _wait(self, found: Callable[[], Any], timeout: float, what: str) -> Any:
        """Call ``found`` until it returns something true, and return that.

        :raises TimeoutError: not in ``timeout`` seconds.
        :raises RuntimeError: a Patroni this cluster started (and did not kill) exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            for member in self.members:
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(
                        f"{member.name}'s Patroni exited while waiting for {what}; {self.describe()}"
                    )
            value = found()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}; {self.describe()}")
            time.sleep(0.1)

    def describe(self) -> str:
        """The members' state and the end of each node's log, for error messages."""
        logs = "".join(f"\n--- {m.logfile}:\n{m.log_tail()}" for m in self.members)
        return f"members: {self.state()}{logs}"

    # -- starting and stopping ------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        """Start etcd and every node (the first bootstraps the cluster, the others
        clone it); make ``dbname``; return once every member streams. Whatever
        started is stopped again if a step fails."""
        started = time.monotonic()
        try:
            self._start_reaper()
            self._start_etcd()
            first, *others = self.members
            self.start_member(first.name)
            self.wait_for_leader(timeout)
            for member in others:
                self.start_member(member.name)
            self.wait_until_healthy(timeout)
            # Once a standby streams: in strict synchronous mode a commit waits for one.
            query(first.dsn(), f'CREATE DATABASE "{self.dbname}"')
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started

    def _start_reaper(self) -> None:
        """A process that kills the cluster if this one dies without stopping it
        (``SIGKILL``, or a ``SIGTERM`` that pytest does not clean up after)."""
        argv = [sys.executable, "-c", _REAPER, str(os.getpid()), str(self.base)]
        self.reaper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603

    def _start_etcd(self) -> None:
        directory = self.base / "etcd"
        directory.mkdir(parents=True, exist_ok=True)
        client, peer = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            self.programs.etcd,
            "--name=pgstore",
            f"--data-dir={directory / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=pgstore={peer}",
            "--initial-cluster-state=new",
        ]
        with open(directory / "etcd.log", "ab") as log:
            self.etcd = subprocess.Popen(  # noqa: S603 - our own arguments
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

        def up() -> bool:
            if self.etcd is None or self.etcd.poll() is not None:
                raise RuntimeError(f"etcd exited: {(directory / 'etcd.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(client + "/health", timeout=1) as response:  # noqa: S310
                    return json.loads(response.read()).get("health") == "true"
            except OSError:
                return False

        self._wait(up, 30, "etcd")

    def _config(self, member: Member) -> dict[str, Any]:
        return {
            "scope": SCOPE,
            "namespace": "/service/",
            "name": member.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{member.host}:{member.rest_port}",
                "connect_address": f"{member.host}:{member.rest_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {"dcs": self.dcs, "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}]},
            "postgresql": {
                "listen": f"{member.host}:{member.port}",
                "connect_address": f"{member.host}:{member.port}",
                "data_dir": str(member.data),
                "bin_dir": self.bindir,
                "pgpass": str(member.base / "pgpass"),
                "authentication": {
                    # Every loopback connection is trusted: no passwords.
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "replicator"},
                    "rewind": {"username": "postgres"},
                },
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "parameters": {"unix_socket_directories": str(member.base)},
                "basebackup": [{"checkpoint": "fast"}],
                "remove_data_directory_on_rewind_failure": True,
            },
        }

    def start_member(self, name: str) -> None:
        """Start ``name``'s Patroni (which starts its PostgreSQL): the first
        start of a node, or the rejoin of a killed one. Returns at once."""
        member = self.member(name)
        if member.running:
            raise RuntimeError(f"{name}'s Patroni already runs")
        hand_over(member.base, self.run_as)
        member.config.write_text(json.dumps(self._config(member), indent=1))  # YAML reads JSON
        kwargs: dict[str, Any] = {}
        env = {**os.environ, "HOME": str(member.base), "PYTHONUNBUFFERED": "1"}
        if self.run_as is not None:
            account = pwd.getpwnam(self.run_as)
            kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            env["USER"] = env["LOGNAME"] = self.run_as
        with open(member.logfile, "ab") as log:
            member.process = subprocess.Popen(  # noqa: S603 - our own arguments
                [self.programs.patroni, str(member.config)],
                cwd=member.base,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kwargs,
            )

    def stop(self) -> None:
        """Kill every Patroni, its PostgreSQL and etcd (``SIGKILL``: nothing of them is kept)."""
        for member in self.members:
            self.kill_member(member.name)
        for process in (self.etcd, self.reaper):
            if process is not None:
                _kill(process.pid)
                process.wait()
        self.etcd = self.reaper = None

    def __enter__(self) -> PatroniCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- events ----------------------------------------------------------------

    def switchover(self, candidate: str = "", timeout: float = 60.0) -> str:
        """A planned ``patronictl switchover --force`` (to ``candidate``, else
        Patroni's choice, the synchronous standby); return the new leader's
        name once it takes writes."""
        leader = self.wait_for_leader(timeout)
        started = time.monotonic()
        argv = [self.programs.patronictl, "-c", str(self.member(leader).config), "switchover"]
        argv += ["--leader", leader, "--force", *(["--candidate", candidate] if candidate else []), SCOPE]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(f"patronictl switchover failed: {done.stdout}{done.stderr}")
        new = self.wait_for_leader(timeout, other_than=leader)
        self.timings["switchover"] = time.monotonic() - started
        return new

    def kill_member(self, name: str, timeout: float = 30.0) -> None:
        """Crash ``name``: ``SIGKILL`` to its Patroni, then to its postmaster;
        return once the postmaster's children (backends, walsenders, its
        walreceiver) have noticed and exited, as they do on their own."""
        member = self.member(name)
        postmaster = member.postmaster_pid
        children = _children(postmaster) if postmaster is not None else []
        if member.process is not None:
            _kill(member.process.pid)
            member.process.wait()
            member.process = None
        _kill(postmaster)
        self._wait(lambda: not any(_alive(pid) for pid in children), timeout, f"{name}'s processes to end")

    def kill_patroni(self, name: str) -> None:
        """``SIGKILL`` to ``name``'s Patroni alone: its PostgreSQL runs on (as when
        Patroni crashes on a node without Patroni's watchdog). Its key expires after
        ``ttl``; a leader's standby is then promoted beside it: a split brain."""
        member = self.member(name)
        if member.process is not None:
            _kill(member.process.pid)
            member.process.wait()
            member.process = None
        self._killed_at = time.monotonic()

    def kill_leader(self, timeout: float = 60.0) -> str:
        """Crash the leader (:meth:`kill_member`); return its name. Its leader key
        stays in etcd until its ``ttl`` runs out: only then may another node take over."""
        leader = self.wait_for_leader(timeout)
        self.kill_member(leader)
        self._killed_at = time.monotonic()
        return leader

    def wait_for_failover(self, killed: str, timeout: float = 120.0) -> str:
        """After :meth:`kill_leader` (or :meth:`kill_patroni` of the leader): wait
        for another leader; its name."""
        new = self.wait_for_leader(timeout, other_than=killed)
        self.timings["failover"] = time.monotonic() - self._killed_at
        return new

    def rejoin(self, name: str, timeout: float = 120.0) -> None:
        """Start ``name``'s Patroni again after :meth:`kill_member` or
        :meth:`kill_leader`; return once every member streams (Patroni first
        rewinds an old primary with ``pg_rewind``)."""
        started = time.monotonic()
        self.start_member(name)
        self.wait_until_healthy(timeout)
        self.timings["rejoin"] = time.monotonic() - started


def cluster_factory(bindir: str, run_as: str | None) -> Iterator[Callable[..., PatroniCluster]]:
    """The ``pgstore_patroni_cluster_factory`` fixture: yields ``make(**options)``,
    which starts a :class:`PatroniCluster` (``options``: its keyword arguments) in a
    new temporary directory; then stops every cluster it made and removes its
    directory. Skips the test, saying what to install, when etcd or Patroni is missing.

    The directory is the system's (``tempfile``), not pytest's: Patroni runs as the
    unprivileged user for a minute or more, and a pytest run started meanwhile
    (another checkout's, as root) makes its own temporary root private again."""
    import pytest

    try:
        find_programs()
    except PatroniMissing as exc:
        pytest.skip(f"pytest_pgstore: a Patroni cluster needs etcd and Patroni: {exc}")
    with contextlib.ExitStack() as stops:

        def make(**options: Any) -> PatroniCluster:
            base = Path(tempfile.mkdtemp(prefix="pgstore-patroni-"))
            stops.callback(shutil.rmtree, base, ignore_errors=True)
            cluster = PatroniCluster(base, run_as=run_as or "", bindir=bindir, **options)
            stops.callback(cluster.stop)
            cluster.start()
            return cluster

        yield make
