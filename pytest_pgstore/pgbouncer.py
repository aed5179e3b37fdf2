"""A throwaway PgBouncer in transaction pooling mode, for the pytest plugin.

Big deployments put PgBouncer between their app servers and PostgreSQL, most
often with ``pool_mode = transaction``: a client connection gets a server
connection for one transaction only, so anything a client leaves on a server
connection (a ``SET`` outside a transaction, a session advisory lock, a
prepared statement, ``LISTEN``) leaks to other clients or goes missing. Running
a suite through this PgBouncer shows whether the code under test survives that.

:class:`PgBouncer` runs Debian's ``pgbouncer`` program in the foreground on a
free loopback port, in front of one PostgreSQL server, and as an unprivileged
user when started by root (PgBouncer refuses to run as root).
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from .localdb import free_port, open_path_to

# Server connections per (database, user) pool. Deliberately few: many client
# connections then share them, as they do in production.
POOL_SIZE = 2

# PgBouncer remembers these startup parameters per client and sets them again
# on whichever server connection the client gets; every other SET leaks.
TRACKED_PARAMETERS = frozenset(
    {"client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name"}
)


def find_pgbouncer(path: str = "") -> str | None:
    """The pgbouncer program: ``path`` if given, else on PATH, else Debian's
    ``/usr/sbin/pgbouncer`` (not on a normal user's PATH). None if missing."""
    candidates = [path] if path else [shutil.which("pgbouncer") or "", "/usr/sbin/pgbouncer"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _quote(value: str) -> str:
    """A value for a libpq-style ``key=value`` string in pgbouncer.ini."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncer:
    """One pgbouncer process in front of the server that ``server_dsn`` reaches.

    Every database name is forwarded to the database of that name on the
    server, for the server's user, with trust authentication on the loopback
    listener (the password, if the server DSN has one, is what PgBouncer uses
    to log in to the server). ``pool_mode = transaction``, :data:`POOL_SIZE`
    server connections per database and user, and a client waits at most
    ``query_wait_timeout`` seconds for one: a transaction left open by a test
    makes the next queries fail with an error, not hang.
    """

    def __init__(
        self,
        executable: str,
        server_dsn: str,
        workdir: Path,
        run_as: str | None = None,
        pool_size: int = POOL_SIZE,
        query_wait_timeout: int = 10,
    ) -> None:
        from psycopg2.extensions import parse_dsn

        server = parse_dsn(server_dsn)
        self.executable = executable
        self.workdir = workdir
        self.run_as = run_as
        self.user = server.get("user") or getpass.getuser()
        self.server_host = server.get("host") or "/var/run/postgresql"
        self.server_port = int(server.get("port") or 5432)
        self._server_password = server.get("password") or ""
        self.pool_size = pool_size
        self.query_wait_timeout = query_wait_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "pgbouncer.log"

    def dsn(self, dbname: str) -> str:
        """DSN of ``dbname`` on the server, through this PgBouncer."""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={self.user}"

    @property
    def console_dsn(self) -> str:
        """DSN of PgBouncer's admin console (``SHOW POOLS``, ``SHOW SERVERS``...)."""
        return self.dsn("pgbouncer")

    def _write_config(self, port: int) -> Path:
        ini = self.workdir / "pgbouncer.ini"
        users = self.workdir / "userlist.txt"
        users.write_text(f'"{self.user}" "{self._server_password}"\n')
        ini.write_text(
            "[databases]\n"
            f"* = host={_quote(self.server_host)} port={self.server_port}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"admin_users = {self.user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"query_wait_timeout = {self.query_wait_timeout}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        for path in (users, ini):
            os.chmod(path, 0o600)
        return ini

    def _user_kwargs(self) -> dict[str, Any]:
        """Popen arguments that start pgbouncer as ``run_as`` (under root only),
        after handing it the working directory."""
        if os.geteuid() != 0 or not self.run_as:
            return {}
        try:
            user = pwd.getpwnam(self.run_as)
        except KeyError:
            raise RuntimeError(f"no user {self.run_as!r} to run pgbouncer as (--pgstore-run-as)") from None
        open_path_to(self.workdir.resolve())
        for path in (self.workdir, *self.workdir.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 15.0) -> None:
        """Start pgbouncer and wait until it listens.

        :raises RuntimeError: it exited or did not listen in time; the
            message holds its log.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The port is picked here and bound by pgbouncer a moment later: if
        # another program takes it in between, try another one.
        for _attempt in range(3):
            port = free_port()
            ini = self._write_config(port)
            self._log = open(self.log_path, "ab")  # closed in stop()
            self.process = subprocess.Popen(  # noqa: S603 - our own arguments
                [self.executable, str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                cwd="/",
                **self._user_kwargs(),
            )
            self.port = port
            if self._wait_listening(port, timeout):
                return
            self.stop()
            if "Address already in use" not in self.log():
                break
        raise RuntimeError(f"pgbouncer did not start; its log ({self.log_path}):\n{self.log()[-3000:]}")

    def _wait_listening(self, port: int, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if f"listening on 127.0.0.1:{port}" in self.log():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    pass
            time.sleep(0.02)
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pgbouncer (SIGTERM: immediate shutdown) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
