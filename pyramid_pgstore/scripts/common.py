"""What the console scripts share: reading the app's ini file the way
Pyramid's own scripts do, and reporting errors as one line."""

from __future__ import annotations

import argparse
import configparser
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
from pyramid.exceptions import ConfigurationError
from pyramid.paster import get_appsettings, setup_logging
from pyramid.scripts.common import parse_vars

from pyramid_pgstore.dsn import redact
from pyramid_pgstore.errors import PGStoreError
from pyramid_pgstore.options import OptionError
from pyramid_pgstore.settings import configuration_errors, parse_settings
from pyramid_pgstore.store import PGStore

USAGE_ERROR = 2
DATABASE_ERROR = 1


class ScriptError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def config_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A script's parser with CONFIG_URI and ``name=value`` variables, as in
    Pyramid's scripts; the script adds its own options."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=formatter,
    )
    parser.add_argument("config_uri", help="the app's ini file, e.g. production.ini or production.ini#main")
    parser.add_argument(
        "config_vars",
        nargs="*",
        default=[],  # else argparse calls it required when CONFIG_URI is missing
        metavar="name=value",
        help="a variable for %%(name)s in the ini file, as in Pyramid's scripts; "
        "a pgstore.* name overrides that setting",
    )
    return parser


def load_store(config_uri: str, config_vars: list[str]) -> PGStore:
    """A store for the ``pgstore.*`` settings of ``config_uri``: at most two
    connections (from ``pgstore.dsn``, or the URL of the engine
    ``pgstore.engine`` names), no table creation, no cleanup thread, no
    secret needed.

    :raises ScriptError: the file is missing or unreadable, or a setting is refused.
    """
    path = config_uri.split("#", 1)[0]
    if not Path(path).is_file():
        raise ScriptError(f"no such config file: {path}")
    try:
        given = parse_vars(config_vars)
    except ValueError as exc:
        raise ScriptError(redact(str(exc))) from None
    # pgstore.* names override settings, taken as they are (a '%' in a
    # password included); the others are variables for %(name)s in the file.
    overrides = {name: value for name, value in given.items() if name.startswith("pgstore.")}
    variables = {name: value for name, value in given.items() if name not in overrides}
    try:
        setup_logging(config_uri, global_conf=variables)
        settings = {**get_appsettings(config_uri, options=variables)}
    except configparser.InterpolationError as exc:
        # Its message quotes the value from the '%' on: a password, maybe.
        raise ScriptError(
            f"cannot read {config_uri}: a '%' in {exc.option} that is not '%%' or '%(name)s'"
            " (write '%%' for a '%' in an ini file)"
        ) from None
    except Exception as exc:  # plaster and configparser raise many kinds for one cause
        raise ScriptError(redact(f"cannot read {config_uri}: {exc}")) from None
    settings.update(overrides)
    try:
        parsed = parse_settings(settings, need_secret=False)
        with configuration_errors(settings):
            if parsed.engine is not None:  # the app's SQLAlchemy engine: a small one of our own
                engine = _engine(str(settings.get(parsed.engine + "url", "")), parsed.engine)
                options = parsed.store.replace(create_table=False, cleanup_interval=0)
                return PGStore.from_engine(engine, options=options)
            options = parsed.store.replace(pool_min=0, pool_max=2, create_table=False, cleanup_interval=0)
            return PGStore(parsed.dsn or "", options=options)
    except ConfigurationError as exc:
        raise ScriptError(redact(f"{config_uri}: {exc}")) from None


def _engine(url: str, prefix: str) -> Any:
    """A one-connection engine on the app's URL (the script's own).

    :raises OptionError: (``engine``) the store cannot use such an engine,
        as ``config.include`` would say.
    """
    try:
        import sqlalchemy

        from pyramid_pgstore.sqla import unsupported

        reason = unsupported(url)
        if reason is None:
            return sqlalchemy.create_engine(url, pool_size=1, max_overflow=1)
    except Exception as exc:  # no SQLAlchemy, or a URL it cannot read: several kinds
        raise ScriptError(redact(f"{prefix}url: {exc}")) from None
    raise OptionError("engine", reason)


def say(prog: str, message: str) -> None:
    """A progress line on stdout, with the time."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {prog}: {message}", flush=True)


def fail(prog: str, message: str) -> None:
    """An error, as one line on stderr (libpq's messages span several)."""
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr)


def run_on_store(prog: str, args: argparse.Namespace, work: Callable[[PGStore], int | None]) -> int:
    """Load the store the arguments name and run ``work(store)``; return the
    exit status: ``work``'s (0 for None), 2 for a configuration error, 1 for
    a database error (each said in one line on stderr). The store is closed."""
    try:
        store = load_store(args.config_uri, args.config_vars)
    except ScriptError as exc:
        fail(prog, str(exc))
        return USAGE_ERROR
    try:
        return work(store) or 0
    except (PGStoreError, psycopg2.Error) as exc:
        fail(prog, f"database error: {str(exc).strip()}")
        return DATABASE_ERROR
    finally:
        store.close()
