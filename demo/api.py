"""The demo's JSON API, served by waitress in a process of its own.

A deployment's app server in miniature: tests/test_processes.py starts three
of these against one database, and bench/processes.py measures one against
three. Settings come from the
environment:

``PGSTORE_DSN``, ``PGSTORE_SECRET``
    required; every process of one deployment must share the secret
``PGSTORE_POOL_MAX``
    the store's pool size (default 4)
``WSGI_THREADS``
    waitress worker threads (default 4)

It listens on 127.0.0.1 on a free port, prints ``listening on 127.0.0.1:PORT``
once it accepts connections, and serves until it is killed. Every view
answers JSON with the process id, so a client can tell who served it:

``/login?user=U``   a new session id holding only ``user``
``/write?k=v...``   stores the query parameters in the session
``/read``           the session, read only
``/incr``           a counter ``n``: read, increment, write
``/logout``         deletes the session
``/ping``           never touches the session (no database work)

Usage: python demo/api.py; or, from Python, :func:`start` several.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyramid.config import Configurator
from waitress.server import create_server


def _reply(request, **extra):
    return {"pid": os.getpid(), "data": dict(request.session), "new": request.session.new, **extra}


def login(request):
    request.session.invalidate()
    request.session["user"] = request.params["user"]
    return _reply(request)


def write(request):
    request.session.update(request.GET.items())
    return _reply(request)


def read(request):
    return _reply(request)


def incr(request):
    request.session["n"] = request.session.get("n", 0) + 1
    return _reply(request, n=request.session["n"])


def logout(request):
    request.session.invalidate()
    return _reply(request)


def ping(request):
    return {"pid": os.getpid()}


def make_app(environ=os.environ):
    settings = {
        "pgstore.dsn": environ["PGSTORE_DSN"],
        "pgstore.secret": environ["PGSTORE_SECRET"],
        "pgstore.pool_max": environ.get("PGSTORE_POOL_MAX", "4"),
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        for view in (login, write, read, incr, logout, ping):
            config.add_route(view.__name__, f"/{view.__name__}")
            config.add_view(view, route_name=view.__name__, renderer="json")
    return config.make_wsgi_app()


@dataclass
class Process:
    """One running server process, as :func:`start` returns it."""

    popen: subprocess.Popen
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(count: int, env: dict[str, str], logdir: Path, timeout: float = 30.0) -> list[Process]:
    """Start ``count`` server processes with ``env`` added to this one's, and
    wait until each listens. All start at once (and so create the table, if
    missing, at the same time). On failure every one is stopped and the
    RuntimeError holds the log of the one that failed."""
    processes = []
    for i in range(count):
        log_path = logdir / f"wsgi-{i}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(  # noqa: S603 - this file, by path: no import path needed
                [sys.executable, __file__],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(Process(popen, log_path))
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            while not process.port:
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", process.log())
                if found:
                    process.port = int(found.group(1))
                elif process.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"server process {process.pid} did not start:\n{process.log()[-3000:]}"
                    )
                else:
                    time.sleep(0.02)
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return processes


def main() -> None:
    app = make_app()
    server = create_server(app, host="127.0.0.1", port=0, threads=int(os.environ.get("WSGI_THREADS", "4")))
    print(f"listening on 127.0.0.1:{server.effective_port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
