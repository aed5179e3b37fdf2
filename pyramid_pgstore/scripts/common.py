"""What the console scripts share: reading the app's ini file the way
Pyramid's own scripts do, and reporting errors as one line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pyramid.exceptions import ConfigurationError
from pyramid.paster import get_appsettings, setup_logging
from pyramid.scripts.common import parse_vars

from pyramid_pgstore.settings import configuration_errors, parse_settings
from pyramid_pgstore.store import PGStore

USAGE_ERROR = 2
DATABASE_ERROR = 1


class ScriptError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG_URI and ``name=value`` variables, as in Pyramid's scripts."""
    parser.add_argument("config_uri", help="the app's ini file, e.g. production.ini or production.ini#main")
    parser.add_argument(
        "config_vars",
        nargs="*",
        metavar="name=value",
        help="a variable for %%(name)s in the ini file, as in Pyramid's scripts; "
        "a pgstore.* name overrides that setting",
    )


def load_store(config_uri: str, config_vars: list[str]) -> PGStore:
    """A store for the ``pgstore.*`` settings of ``config_uri``: at most two
    connections, no table creation, no cleanup thread, no secret needed.

    :raises ScriptError: the file is missing or unreadable, or a setting is refused.
    """
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
        store_options = parsed.store.replace(pool_min=0, pool_max=2, create_table=False, cleanup_interval=0)
        with configuration_errors(settings):
            return PGStore(parsed.dsn, options=store_options)
    except ConfigurationError as exc:
        raise ScriptError(f"{config_uri}: {exc}") from None


def say(prog: str, message: str) -> None:
    """A progress line on stdout, with the time."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {prog}: {message}", flush=True)


def fail(prog: str, message: str) -> None:
    """An error line on stderr."""
    print(f"{prog}: {message}", file=sys.stderr)
