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
from collections.abc import Callable
from typing import TextIO

import psycopg2

from pyramid_pgstore.cleanup import DEFAULT_BATCH_SIZE, DEFAULT_REST, Cleaner, CleanupResult
from pyramid_pgstore.errors import PGStoreError
from pyramid_pgstore.store import PGStore

from .common import USAGE_ERROR, config_parser, fail, run_on_store, say

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


def _parser() -> argparse.ArgumentParser:
    parser = config_parser("pgstore-cleanup", DESCRIPTION, EPILOG)
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


def _positive(kind: type) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


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
    batches = "1 batch" if result.batches == 1 else f"{result.batches} batches"
    return f"deleted {result.deleted:,} expired sessions from {table} in {batches}, {result.seconds:.2f} s"


def _say(message: str) -> None:
    say("pgstore-cleanup", message)


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


def _clean(store: PGStore, args: argparse.Namespace) -> None:
    cleaner = Cleaner(store, args.batch_size, args.rest)
    if args.stats:
        stats = store.table_stats()
        recent = stats["ended_recently"]
        kept = (
            f" ({recent:,} of them ended in the last minute, kept for requests in flight)" if recent else ""
        )
        _say(
            f"{store.table}: {stats['live']:,} live, {stats['expired']:,} expired{kept}; "
            f"table {stats['table_bytes']:,} bytes, indexes {stats['index_bytes']:,} bytes"
        )
    if args.dry_run:
        _say(f"would delete {store.count_expired():,} expired sessions from {store.table}")
    elif args.interval:
        _run_forever(cleaner, args)
    elif not args.stats:
        _run_pass(cleaner, args, None)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv[1:])
    if args.rest < 0:
        fail("pgstore-cleanup", "--rest must be 0 or more")
        return USAGE_ERROR
    return run_on_store("pgstore-cleanup", args, lambda store: _clean(store, args))


if __name__ == "__main__":
    sys.exit(main())
