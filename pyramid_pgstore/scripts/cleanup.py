"""``pgstore-cleanup CONFIG_URI [name=value ...]``: delete expired sessions.

Reads the app's ini file the way Pyramid's own scripts do (``pyramid.paster``:
settings and logging, ``#section`` and ``name=value`` overrides) and uses the
same ``pgstore.*`` settings as the app.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import psycopg2
from pyramid.exceptions import ConfigurationError
from pyramid.paster import get_appsettings, setup_logging
from pyramid.scripts.common import parse_vars

from pyramid_pgstore.cleanup import DEFAULT_BATCH_SIZE, DEFAULT_REST, Cleaner, CleanupResult
from pyramid_pgstore.errors import PGStoreError
from pyramid_pgstore.settings import configuration_errors, parse_settings
from pyramid_pgstore.store import PGStore

USAGE_ERROR = 2
DATABASE_ERROR = 1

DESCRIPTION = """\
Delete expired sessions from the pyramid_pgstore table named by the
pgstore.* settings of CONFIG_URI (an ini file, optionally with #section).

Rows are deleted in batches of --batch-size, each its own short transaction
that skips rows a request is writing, so live traffic is not held up. Only
one cleaner works on a table at a time (a PostgreSQL advisory lock); a second
one says so and exits 0, or waits with --wait.
"""

EPILOG = """\
exit status: 0 done (or another cleaner was running), 1 database error,
2 usage or configuration error.

examples:
  pgstore-cleanup production.ini                  one pass, then exit
  pgstore-cleanup production.ini --interval 300   a pass every 5 min (+-10%)
  pgstore-cleanup production.ini#main --stats     counts and sizes
  pgstore-cleanup production.ini pgstore.dsn=postgresql://cleaner@db/app
"""


class ScriptError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgstore-cleanup",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config_uri", help="the app's ini file, e.g. production.ini or production.ini#main")
    parser.add_argument(
        "config_vars",
        nargs="*",
        metavar="name=value",
        help="a variable for %%(name)s in the ini file, as in Pyramid's scripts; "
        "a pgstore.* name overrides that setting",
    )
    parser.add_argument(
        "--interval",
        type=_positive(float),
        metavar="SECONDS",
        help="keep running: a pass every SECONDS (+-10%% jitter) until SIGINT or SIGTERM",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive(int),
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"rows per delete statement and transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--rest",
        type=float,
        default=DEFAULT_REST,
        metavar="RATIO",
        help=f"after each batch, pause RATIO times as long as it took (default {DEFAULT_REST:g})",
    )
    parser.add_argument("--wait", action="store_true", help="wait for a running cleaner instead of exiting")
    parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    parser.add_argument(
        "--stats", action="store_true", help="print live and expired counts, table and index sizes"
    )
    return parser


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _load_store(config_uri: str, config_vars: list[str]) -> PGStore:
    path = config_uri.split("#", 1)[0]
    if not Path(path).is_file():
        raise ScriptError(f"no such config file: {path}")
    try:
        options = parse_vars(config_vars)
    except ValueError as exc:
        raise ScriptError(str(exc)) from None
    try:
        setup_logging(config_uri, global_conf=options)
        settings = {**get_appsettings(config_uri, options=options)}
    except Exception as exc:  # plaster and configparser raise many kinds for one cause
        raise ScriptError(f"cannot read {config_uri}: {exc}") from None
    settings.update((name, value) for name, value in options.items() if name.startswith("pgstore."))
    try:
        parsed = parse_settings(settings, need_secret=False)
        # Two connections at most (the lock's and the batches'); no table
        # creation and no cleanup thread of its own.
        options = parsed.store.replace(pool_min=0, pool_max=2, create_table=False, cleanup_interval=0)
        with configuration_errors(settings):
            return PGStore(parsed.dsn, options=options)
    except ConfigurationError as exc:
        raise ScriptError(f"{config_uri}: {exc}") from None


class _Progress:
    """On a terminal, one line rewritten after each batch; elsewhere nothing
    (the pass's summary line is printed either way)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False

    def __call__(self, deleted: int, seconds: float) -> None:
        if self.stream.isatty() and seconds >= 1:
            rate = deleted / seconds if seconds else 0
            self.stream.write(f"\r  deleted {deleted:,} rows, {rate:,.0f} rows/s")
            self.stream.flush()
            self.shown = True

    def end(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.shown = False


def _report(result: CleanupResult, table: str) -> str:
    if result.skipped:
        return f"another cleaner is running on {table}; nothing done"
    return (
        f"deleted {result.deleted:,} expired sessions from {table} "
        f"in {result.batches} batches, {result.seconds:.2f} s"
    )


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pgstore-cleanup: {message}", flush=True)


def _run_pass(cleaner: Cleaner, args: argparse.Namespace, stop: threading.Event | None) -> None:
    progress = _Progress(sys.stderr)
    try:
        result = cleaner.run_once(wait=args.wait, stop=stop, on_batch=progress)
    finally:
        progress.end()
    _say(_report(result, cleaner.store.table))


def _run_forever(cleaner: Cleaner, args: argparse.Namespace) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Set from another thread: the handler may interrupt stop.wait()
        # while it holds the event's lock.
        signal.signal(signum, lambda *_: threading.Thread(target=stop.set).start())
    _say(f"cleaning {cleaner.store.table} every {args.interval:g} s; SIGINT or SIGTERM stops")
    while not stop.is_set():
        try:
            _run_pass(cleaner, args, stop)
        except (PGStoreError, psycopg2.Error) as exc:  # the next pass may succeed
            _say(f"database error: {str(exc).strip()}")
        stop.wait(args.interval * random.uniform(0.9, 1.1))  # noqa: S311 - jitter, not secrets
    _say("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv[1:])
    try:
        store = _load_store(args.config_uri, args.config_vars)
    except ScriptError as exc:
        print(f"pgstore-cleanup: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if args.rest < 0:
        print("pgstore-cleanup: --rest must be 0 or more", file=sys.stderr)
        return USAGE_ERROR
    cleaner = Cleaner(store, args.batch_size, args.rest)
    try:
        if args.stats:
            stats = store.table_stats()
            _say(
                f"{store.table}: {stats['live']:,} live, {stats['expired']:,} expired; "
                f"table {stats['table_bytes']:,} bytes, indexes {stats['index_bytes']:,} bytes"
            )
        if args.dry_run:
            _say(f"would delete {store.count_expired():,} expired sessions from {store.table}")
        elif args.interval:
            _run_forever(cleaner, args)
        elif not args.stats:
            _run_pass(cleaner, args, None)
    except (PGStoreError, psycopg2.Error) as exc:
        print(f"pgstore-cleanup: database error: {str(exc).strip()}", file=sys.stderr)
        return DATABASE_ERROR
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
