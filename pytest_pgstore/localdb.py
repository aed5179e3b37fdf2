"""A local PostgreSQL server for development: the demo, the benchmarks, the replica pairs.

PostgreSQL refuses to run as root, and containers and CI often run as root.
Started by root, every server program here runs as an unprivileged user
(``$PGSTORE_RUN_AS``, else ``postgres`` if that user exists, else
``nobody``), which is given the server's directory. Started by anyone else,
the programs simply run.

:class:`LocalPostgres` makes a cluster in a directory that it keeps, starts,
stops and restarts it, runs the other server programs (``pg_basebackup``,
``pg_rewind``) as the server's user, and creates databases: ``make demo``,
``bench/`` and :mod:`pytest_pgstore.localpair` use it. The pytest plugin's
throwaway server is pytest-postgresql's executor instead
(:mod:`pytest_pgstore.server`), which uses the helpers here for root.

Development and test tooling: the session store (``pyramid_pgstore``) never
imports it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg2

RUN_AS_ENV = "PGSTORE_RUN_AS"
BINDIR_ENV = "PGSTORE_PG_BINDIR"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(dsn: str, sql: str, params: Any = None, **connect: Any) -> list[tuple[Any, ...]]:
    """The rows of one statement ([] for none), run in autocommit mode on a
    connection of its own (``connect``: more ``psycopg2.connect`` arguments)."""
    conn = psycopg2.connect(dsn, **connect)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def find_pg_ctl(bindir: str = "") -> str:
    """The real pg_ctl: in ``bindir`` if given, else where pg_config says,
    else on PATH, else the newest /usr/lib/postgresql/*/bin (Debian's place).

    :raises FileNotFoundError: with what to install.
    """
    if bindir:
        candidates = [os.path.join(bindir, "pg_ctl")]
    else:
        candidates = []
        try:
            found = subprocess.run(
                ["pg_config", "--bindir"],  # noqa: S607 - found on PATH, as libpq documents
                capture_output=True,
                text=True,
                timeout=30,
            )
            candidates.append(os.path.join(found.stdout.strip(), "pg_ctl"))
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(shutil.which("pg_ctl") or "")
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key, reverse=True)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "PostgreSQL's server programs were not found "
        f"(looked at {', '.join(c for c in candidates if c) or 'nothing'}). "
        "Install them (Debian/Ubuntu: apt-get install postgresql) and point "
        "--pgstore-pg-bindir at the directory holding pg_ctl, or give an "
        "existing server with --pgstore-dsn."
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = path.split("/")[-3]
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def default_run_as_user() -> str:
    """The unprivileged user to run PostgreSQL as: postgres if it exists, else nobody."""
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        return "nobody"


def run_as_user(given: str = "") -> str | None:
    """Under root, the user that runs the server (``given``, else
    ``$PGSTORE_RUN_AS``, else :func:`default_run_as_user`); else None."""
    if os.geteuid() != 0:
        return None
    return given or os.environ.get(RUN_AS_ENV) or default_run_as_user()


def open_path_to(directory: Path) -> None:
    """Let other users traverse (not list) every ancestor of ``directory``.

    pytest and ``tempfile`` make their directories private to root (mode
    0700); the server's user must at least pass through them to reach its own.
    """
    for ancestor in directory.parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(ancestor, stat.S_IMODE(mode) | stat.S_IXOTH)


def hand_over(directory: Path, user: str | None) -> None:
    """Make ``directory`` (the parent of a data directory) the server user's."""
    directory.mkdir(parents=True, exist_ok=True)
    if user is None:
        return
    account = pwd.getpwnam(user)
    open_path_to(directory)
    os.chown(directory, account.pw_uid, account.pw_gid)


class LocalPostgres:
    """A PostgreSQL cluster in ``base/data``, listening on 127.0.0.1.

    Its socket and log (``postgresql.log``) are in ``base``. Every local
    connection is trusted and the superuser is ``postgres``: for
    development and test machines only.

    :param base: the directory to keep it in (created; kept afterwards).
    :param settings: server settings for ``postgres -c name=value``.
    :param run_as: under root, the user to run it as (see :func:`run_as_user`).
    :param bindir: where the server programs are (found if empty).
    :param log: where progress lines go.
    """

    host = "127.0.0.1"
    user = "postgres"
    password = None  # every local connection is trusted
    initdb_options: tuple[str, ...] = ()  # more initdb arguments, for subclasses

    def __init__(
        self,
        base: Path,
        *,
        settings: Mapping[str, str] | None = None,
        run_as: str = "",
        bindir: str = "",
        port: int | None = None,
        log: Callable[[str], Any] = print,
    ) -> None:
        self.base = Path(base).resolve()
        self.data = self.base / "data"
        self.logfile = self.base / "postgresql.log"
        self.settings = dict(settings or {})
        self.run_as = run_as_user(run_as)
        self.bindir = os.path.dirname(find_pg_ctl(bindir or os.environ.get(BINDIR_ENV, "")))
        self.port = port or free_port()
        self.log = log

    # -- programs -----------------------------------------------------------

    def run(self, program: str, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run one of the server programs (``pg_ctl``, ``pg_basebackup``, ...)
        as the server's user; return what it printed.

        Under root the path to the server's directory is opened again first:
        a pytest run started meanwhile as root resets its temporary root
        (``/tmp/pytest-of-root``) to 0700, which would lock the server's user
        out of a cluster kept under ``tmp_path``."""
        kwargs: dict[str, Any] = {}
        if self.run_as is not None:
            open_path_to(self.base)
            account = pwd.getpwnam(self.run_as)
            kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        done = subprocess.run(  # noqa: S603 - our own arguments
            [os.path.join(self.bindir, program), *args],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    @property
    def exists(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs, else None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None  # no pid file, or a stale one (a killed server)
        try:  # a stale file's pid may have been reused: is it a server of this directory?
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return pid  # no /proc: trust the pid
        return pid if os.fsencode(self.data) in command and pid not in (os.getpid(), os.getppid()) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def init(self) -> None:
        """Create the cluster unless it exists."""
        if self.exists:
            return
        hand_over(self.base, self.run_as)
        self.log(f"creating a PostgreSQL cluster in {self.data}")
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            f"--username={self.user}",
            "--encoding=UTF8",
            *self.initdb_options,
        )

    def _options(self) -> str:
        sockets = f"'{self.base}'"
        settings = {"listen_addresses": self.host, "unix_socket_directories": sockets, **self.settings}
        return " ".join([f"-p {self.port}", *(f"-c {name}={value}" for name, value in settings.items())])

    def start(self) -> None:
        """Create the cluster if needed and start the server; wait until it accepts connections.

        A server still running on this data directory, left by an earlier
        run that was killed (a closed terminal, ``kill -9``), is stopped
        first: it may listen on another port, and ``pg_ctl start`` would
        fail on its lock file.
        """
        self.init()
        leftover = self.pid
        if leftover is not None:
            self.log(f"stopping the PostgreSQL an earlier run left running on {self.data} (pid {leftover})")
            self.stop("fast")
        open_path_to(self.base)  # a later tool may have closed it again
        data, logfile = str(self.data), str(self.logfile)
        self.run("pg_ctl", "start", "-w", "-D", data, "-o", self._options(), "-l", logfile)
        self.log(f"PostgreSQL on {self.host}:{self.port}, data in {self.data}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``) if it runs."""
        if self.running:
            self.run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", mode)
            self.log("PostgreSQL stopped")

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (``-m mode``) and start it again, same port and settings."""
        data, logfile = str(self.data), str(self.logfile)
        # -l: without it the new postmaster would hold this call's output pipes open.
        self.run("pg_ctl", "restart", "-w", "-D", data, "-m", mode, "-o", self._options(), "-l", logfile)
        self.log(f"PostgreSQL restarted on {self.host}:{self.port}")

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log, for error messages."""
        if not self.logfile.exists():
            return ""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    # -- databases ----------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    @property
    def admin_dsn(self) -> str:
        """The DSN of the ``postgres`` database, for CREATE and DROP DATABASE."""
        return self.dsn()

    @property
    def datadir(self) -> str:
        return str(self.data)

    @property
    def unixsocketdir(self) -> str:
        return str(self.base)

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        """Create database ``name`` and return its DSN."""
        if not exist_ok or not query(self.dsn(), "SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
            query(self.dsn(), f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
