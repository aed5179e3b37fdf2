"""The connection string: checked once, completed with safe libpq defaults."""

from __future__ import annotations

from typing import Any

import psycopg2
from psycopg2.extensions import parse_dsn

from .options import OptionError


def connect_kwargs(dsn: str, pool_timeout: float) -> dict[str, Any]:
    """libpq parameters: the DSN, plus defaults it does not set itself.

    :raises OptionError: (named ``dsn``) libpq cannot parse it.
    """
    try:
        given = parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise OptionError("dsn", f"invalid dsn: {exc}".strip()) from None
    kwargs: dict[str, Any] = {"dsn": dsn}
    seconds = max(2, int(pool_timeout + 0.999))
    if "connect_timeout" not in given:
        # libpq waits forever by default; 2 s is its smallest effective value.
        kwargs["connect_timeout"] = seconds
    if "application_name" not in given:
        kwargs["application_name"] = "pyramid_pgstore"
    # A network cut or a frozen host would otherwise block a statement until
    # the kernel gives up (about 15 minutes): unacknowledged data fails after
    # tcp_user_timeout, and keepalives find a dead idle connection.
    defaults = {
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
    }
    kwargs.update((name, value) for name, value in defaults.items() if name not in given)
    return kwargs
