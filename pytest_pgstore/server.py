"""The test run's throwaway PostgreSQL: pytest-postgresql's executor, shared by pytest-xdist's workers.

From pytest-postgresql (:class:`~pytest_postgresql.executors.PostgreSQLExecutor`
and its ``postgresql_*`` options): the cluster's creation (``pg_ctl initdb``,
trust or password authentication), the start command (``-F``: fsync off,
the port, the socket directory, ``postgresql_postgres_options``), the
version check (14 or later), ``running()``, ``stop()`` and the data
directory's removal.

What it lacks, added here:

* **Root.** PostgreSQL refuses to run as root. Under root the executor is
  given a ``pg_ctl`` of the run's own (:func:`pg_ctl_as`) that runs the real
  one as an unprivileged user (``--pgstore-run-as``, else ``postgres`` if it
  exists, else ``nobody``), which is given the server's directory.
* **One server for the run.** The first process of a run that needs the
  server starts it and writes how to reach it into a state file; the others
  build a twin executor from that file. A file lock makes them take turns.
  The process that made the run's directory stops the server at the end of
  the run: under xdist the controller, which outlives its workers; without
  xdist the one process.
* **A start that does not tie the server to its starter.**
  :meth:`ThrowawayServer.start` runs the executor's start command itself,
  not through mirakuru (the executor's base): mirakuru kills what it started
  (SIGKILL) when the executor object is dropped and when the starting
  process exits. Measured with pytest-postgresql 10.0 and mirakuru 3.1: a
  process that starts the executor and exits leaves no server behind, one
  that drops the executor object loses it at once, and under xdist, with the
  executor held by the starting worker's session fixture, the other
  worker's next connection a second after that worker's session ended was
  refused in 4 runs of 6.

Nothing here is imported until a test asks for a ``pgstore_`` fixture.
"""

from __future__ import annotations

import fcntl
import json
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mirakuru.base import ENV_UUID
from psycopg2.extensions import make_dsn
from pytest_postgresql.executors import NoopExecutor, PostgreSQLExecutor

from .localdb import hand_over

_STATE = "server.json"
START_TIMEOUT = 120  # seconds for pg_ctl start, and then for the port to answer
# Besides the executor's -F (fsync off): a throwaway test server never needs
# to survive a power cut, and a suite under xdist opens many connections.
SETTINGS = "-c full_page_writes=off -c max_connections=200"


class ThrowawayServer(PostgreSQLExecutor):
    """pytest-postgresql's executor for the run's shared server: ``pgstore_proc``.

    Has ``host``, ``port``, ``user``, ``password``, ``datadir``, ``logfile``,
    ``unixsocketdir``, ``running()`` and ``stop()`` from the executor, and
    :attr:`admin_dsn`. Only :meth:`start` differs (see the module's doc).
    """

    @property
    def admin_dsn(self) -> str:
        """The DSN of the ``postgres`` database, for CREATE and DROP DATABASE."""
        return make_dsn(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            options=self.options or None,
            dbname="postgres",
        )

    def start(self) -> ThrowawayServer:
        """Create the cluster (the executor's ``init_directory``) and run its
        start command as a plain subprocess, without mirakuru's mark, so the
        server outlives the process that started it; wait until it accepts
        TCP connections. Costs an initdb (about a second) and a start.

        :raises RuntimeError: an older PostgreSQL, or initdb or pg_ctl failed
            (with the end of the server's log).
        """
        if self.version < self.MIN_SUPPORTED_VERSION:
            raise RuntimeError(
                f"PostgreSQL {self.version} found at {self.executable}; "
                f"the test server needs {self.MIN_SUPPORTED_VERSION} or later"
            )
        try:
            self.init_directory()
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"pg_ctl initdb failed (exit {exc.returncode}): {exc.output}") from exc
        env = {name: value for name, value in self.envvars.items() if name != ENV_UUID}
        done = subprocess.run(  # noqa: S603 - the executor's own command
            self.command_parts, env=env, capture_output=True, text=True, timeout=START_TIMEOUT, check=False
        )
        deadline = time.monotonic() + START_TIMEOUT
        while done.returncode == 0 and not self.after_start_check():  # -w may be left out of startparams
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if done.returncode != 0 or not self.after_start_check():
            raise RuntimeError(
                f"pg_ctl could not start the test server: {done.stderr.strip()}\n{self.log_tail()}"
            )
        return self

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log, for error messages."""
        path = Path(self.logfile)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def __del__(self) -> None:
        """Nothing: the server outlives this object (the executor's own would
        run ``pg_ctl status`` and try to remove the data directory)."""


class GivenServer(NoopExecutor):
    """pytest-postgresql's no-process executor for a server named by ``--pgstore-dsn``
    (``pgstore_proc`` then starts nothing): ``host``, ``port``, ``user``,
    ``password``, ``version``, and :attr:`admin_dsn`, the DSN as given."""

    def __init__(self, admin_dsn: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(admin_dsn)
        super().__init__(
            host=str(params.get("host", "")),
            port=str(params.get("port") or 5432).split(",")[0],
            user=str(params.get("user", "")),
            options=str(params.get("options", "")),
            dbname=str(params.get("dbname", "")),
            password=str(params["password"]) if "password" in params else None,
            maintenance_dbname=str(params.get("dbname", "postgres")),
        )
        self.admin_dsn = admin_dsn


def pg_ctl_as(user: str, pg_ctl: str, directory: Path) -> str:
    """Write ``directory/pg_ctl``, which runs ``pg_ctl`` as ``user`` (from ``/``,
    which any user may enter), and return its path: the executable the
    executor is given under root. Each call costs a Python start (about 20 ms)."""
    account = pwd.getpwnam(user)
    switch = (
        f"import os, sys; os.setgroups([]); os.setgid({account.pw_gid}); os.setuid({account.pw_uid}); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    script = directory / "pg_ctl"
    script.write_text(
        "#!/bin/sh\n"
        f"# {pg_ctl} as {user}: PostgreSQL refuses to run as root (pytest_pgstore.server).\n"
        "cd / || exit 1\n"
        f'exec {shlex.quote(sys.executable)} -I -c {shlex.quote(switch)} {shlex.quote(pg_ctl)} "$@"\n'
    )
    script.chmod(0o700)
    return str(script)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _executor(directory: Path, state: dict[str, Any]) -> ThrowawayServer:
    base = directory / "pg"
    return ThrowawayServer(
        executable=state["pg_ctl"],
        host=state["host"],
        port=state["port"],
        datadir=str(base / "data"),
        unixsocketdir=state["unixsocketdir"],
        logfile=str(base / "postgresql.log"),
        startparams=state["startparams"],
        dbname="postgres",
        user=state["user"],
        password=state["password"],
        options=state["options"],
        postgres_options=state["postgres_options"],
    )


def shared_server(
    directory: Path, settings: Callable[[], dict[str, Any]], run_as: str | None
) -> ThrowawayServer:
    """The run's server, started in ``directory`` by the first caller.

    ``settings()`` gives the executor's arguments (``pg_ctl``, ``host``,
    ``port``, ``user``, ``password``, ``options``, ``unixsocketdir``,
    ``startparams``, ``postgres_options``; an empty ``unixsocketdir``: the
    server's own directory); called by the first caller only.
    Under root (``run_as``: the user) the programs run as ``run_as``.
    """
    with _locked(directory):
        state_file = directory / _STATE
        if state_file.exists():
            return _executor(directory, json.loads(state_file.read_text()))
        state = settings()
        state["postgres_options"] = f"{SETTINGS} {state['postgres_options']}".strip()
        state["unixsocketdir"] = state["unixsocketdir"] or str(directory / "pg")
        hand_over(directory / "pg", run_as)
        if run_as is not None:
            state["pg_ctl"] = pg_ctl_as(run_as, state["pg_ctl"], directory)
        server = _executor(directory, state)
        server.start()
        state_file.write_text(json.dumps(state))
        return server


def stop_server(directory: Path, on_error: Callable[[str], object] = print) -> None:
    """Stop the server started in ``directory``, if any, and remove the directory."""
    state_file = directory / _STATE
    if state_file.exists():
        server = _executor(directory, json.loads(state_file.read_text()))
        try:
            server.stop()
        except (OSError, subprocess.SubprocessError) as exc:
            on_error(f"pytest_pgstore: could not stop the test server: {exc}\n{server.log_tail()}")
    shutil.rmtree(directory, ignore_errors=True)
