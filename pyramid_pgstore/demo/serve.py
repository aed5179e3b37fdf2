"""``make demo``: ``pserve development.ini``, with a local PostgreSQL if needed.

When neither ``pgstore.dsn`` in the ini file nor ``$PGSTORE_DSN`` names a
database, this starts a PostgreSQL server of its own, with its data under
``./var/pg`` (kept between runs), as an unprivileged user when run as root,
and stops it when the server exits (Ctrl-C or SIGTERM).

Usage: python -m pyramid_pgstore.demo.serve [development.ini]
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
from pyramid.paster import get_appsettings
from pyramid.scripts import pserve

from pytest_pgstore.pg_ctl import PG_CTL_ENV, RUN_AS_ENV, default_run_as_user, find_pg_ctl, launcher_path

DATABASE = "pgstore_demo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_ctl(*args: str) -> None:
    subprocess.run([launcher_path(), *args], check=True, stdout=subprocess.DEVNULL)  # noqa: S603


@contextlib.contextmanager
def local_postgres(var: Path) -> Iterator[str]:
    """Run PostgreSQL with its data in ``var``; yield the demo database's DSN."""
    os.environ[PG_CTL_ENV] = find_pg_ctl(os.environ.get("PGSTORE_PG_BINDIR", ""))
    if os.geteuid() == 0:
        os.environ[RUN_AS_ENV] = os.environ.get(RUN_AS_ENV) or default_run_as_user()
    var.mkdir(parents=True, exist_ok=True)
    data = var.resolve() / "data"
    if not (data / "PG_VERSION").exists():
        print(f"pyramid_pgstore demo: creating a PostgreSQL cluster in {data}", flush=True)
        _pg_ctl("initdb", "--pgdata", str(data), "-o", "--auth=trust --username=postgres --encoding=UTF8")
    port = _free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{data.parent}'"
    _pg_ctl("start", "-w", "-D", str(data), "-o", options, "-l", str(data.parent / "postgresql.log"))
    print(f"pyramid_pgstore demo: PostgreSQL on 127.0.0.1:{port}, data in {data}", flush=True)
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DATABASE}"')
        admin.close()
        yield f"host=127.0.0.1 port={port} user=postgres dbname={DATABASE}"
    finally:
        _pg_ctl("stop", "-D", str(data), "-m", "fast")
        print("pyramid_pgstore demo: PostgreSQL stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    config_uri = argv[1] if len(argv) > 1 else "development.ini"
    if not Path(config_uri.split("#")[0]).is_file():
        print(f"pyramid_pgstore demo: no such file: {config_uri}", file=sys.stderr)
        return 2
    settings = get_appsettings(config_uri)
    if settings.get("pgstore.dsn") or os.environ.get("PGSTORE_DSN"):
        return pserve.main(argv=["pserve", config_uri]) or 0
    # SIGTERM becomes SystemExit, so the server below is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with local_postgres(Path("var/pg")) as dsn:
        os.environ["PGSTORE_DSN"] = dsn
        try:
            return pserve.main(argv=["pserve", config_uri]) or 0
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
