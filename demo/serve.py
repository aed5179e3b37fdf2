"""``make demo``: ``pserve development.ini``, with a local PostgreSQL if needed.

When neither ``pgstore.dsn`` in the ini file nor ``$PGSTORE_DSN`` names a
database, this starts a PostgreSQL server of its own
(:class:`~pytest_pgstore.localdb.LocalPostgres`, from the test tooling), with
its data under ``./var/pg`` (kept between runs), as an unprivileged user when
run as root, and stops it when the server exits (Ctrl-C, SIGTERM, or SIGHUP
when its terminal closes).

Usage: python demo/serve.py [development.ini]
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from pathlib import Path

from pyramid.paster import get_appsettings
from pyramid.scripts import pserve

from pytest_pgstore.localdb import LocalPostgres

# development.ini's app is this folder's package (use = call:demo:main): the
# checkout is made importable, after the installed packages.
sys.path.append(str(Path(__file__).resolve().parents[1]))

DATABASE = "pgstore_demo"


def _say(message: str) -> None:
    print(f"pyramid_pgstore demo: {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    config_uri = argv[1] if len(argv) > 1 else "development.ini"
    if not Path(config_uri.split("#")[0]).is_file():
        print(f"pyramid_pgstore demo: no such file: {config_uri}", file=sys.stderr)
        return 2
    settings = get_appsettings(config_uri)
    if settings.get("pgstore.dsn") or os.environ.get("PGSTORE_DSN"):
        return pserve.main(argv=["pserve", config_uri]) or 0
    # SIGTERM and SIGHUP (the terminal closed; unless run under nohup)
    # become SystemExit, so the server below is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    base = Path("var/pg")
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "demo.lock", "w") as lock:
        try:  # held while this demo runs: a second one must not stop its server
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"pyramid_pgstore demo: another demo is running on {base.resolve()}", file=sys.stderr)
            return 1
        return _serve(config_uri, base)


def _serve(config_uri: str, base: Path) -> int:
    with LocalPostgres(base, log=_say) as server:
        os.environ["PGSTORE_DSN"] = server.create_database(DATABASE, exist_ok=True)
        try:
            return pserve.main(argv=["pserve", config_uri]) or 0
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
