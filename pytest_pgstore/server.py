"""The test run's throwaway PostgreSQL: one server, shared by pytest-xdist's workers.

The first process of a run that needs the server starts it
(:class:`~pyramid_pgstore.localdb.LocalPostgres`: under root it runs as an
unprivileged user) and writes where it listens into a state file; the others
read that file. A file lock makes them take turns. The process that made the
run's directory stops the server at the end of the run: under xdist the
controller, which outlives its workers; without xdist the one process.

(pytest-postgresql's executor cannot be shared this way: mirakuru, which
runs it, kills the server when the process that started it exits, while the
other workers may still be testing.)
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyramid_pgstore.localdb import LocalPostgres

_STATE = "server.json"
# fsync is off: a throwaway test server never needs to survive a power cut,
# and tests run faster without it.
SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "200"}


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _server(directory: Path, state: dict) -> LocalPostgres:
    return LocalPostgres(
        directory / "pg",
        settings=SETTINGS,
        run_as=state["run_as"] or "",
        bindir=state["bindir"],
        port=state["port"],
        log=lambda message: None,
    )


def shared_server(directory: Path, bindir: str, run_as: str | None) -> LocalPostgres:
    """The run's server, started in ``directory`` by the first caller."""
    with _locked(directory):
        state_file = directory / _STATE
        if state_file.exists():
            return _server(directory, json.loads(state_file.read_text()))
        server = _server(directory, {"port": None, "run_as": run_as, "bindir": bindir})  # a free port
        server.start()
        state_file.write_text(json.dumps({"port": server.port, "run_as": run_as, "bindir": server.bindir}))
        return server


def stop_server(directory: Path, on_error: Callable[[str], object] = print) -> None:
    """Stop the server started in ``directory``, if any, and remove the directory."""
    state_file = directory / _STATE
    if state_file.exists():
        try:
            _server(directory, json.loads(state_file.read_text())).stop()
        except RuntimeError as exc:
            on_error(f"pytest_pgstore: could not stop the test server: {exc}")
    shutil.rmtree(directory, ignore_errors=True)
