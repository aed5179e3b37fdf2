"""What the store, the cookie and the session can be told: each default and each check, once.

Each options object is a frozen dataclass whose fields convert and check the
value they are given, from Python (``max_age=3600``) or from ini text
(``max_age="3600"``), so code-built stores and factories and ``pgstore.*``
settings share one definition. A bad value raises :class:`OptionError`,
which names the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from pyramid.path import DottedNameResolver

from .limits import MAX_LENGTH, MAX_POOL_SIZE, MAX_POOL_TIMEOUT, MAX_SECONDS, MAX_STATEMENT_TIMEOUT
from .sql import check_table_name

T = TypeVar("T")

MIN_SECRET_BYTES = 32
DEFAULT_TABLE = "http_sessions"


_NONE = ("", "none", "null", "off")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
# RFC 6265: a cookie name is an HTTP token.
_TOKEN_CHARACTERS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class OptionError(ValueError):
    """A value an option cannot take; ``name`` is the option's (and setting's) name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# -- converters: text or a Python value in, the option's value out -----------


def text(value: Any) -> str:
    return str(value).strip()


def required_text(value: Any) -> str:
    if value is None or str(value).strip() == "":
        raise ValueError("is required")
    return str(value).strip()


def optional_text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    spelled = str(value).strip().lower()
    if spelled in _TRUE:
        return True
    if spelled in _FALSE:
        return False
    raise ValueError("must be true or false")


def number(kind: type = float, minimum: float = 0, maximum: float | None = None) -> Callable[[Any], Any]:
    """A converter to ``kind`` (int or float), finite, at least ``minimum``
    and at most ``maximum``."""

    def convert(value: Any) -> Any:
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int | float):
                converted = kind(value)
                if kind is int and converted != value:
                    raise ValueError
            else:
                converted = kind(str(value).strip())
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"must be a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(converted):
            raise ValueError("must be a finite number")
        if converted < minimum:
            raise ValueError(f"must be {minimum} or more")
        if maximum is not None and converted > maximum:
            raise ValueError(f"must be {maximum:g} or less")
        return converted

    return convert


def optional(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """``convert``, except that None, "" and "none" (any case) mean None."""

    def convert_optional(value: Any) -> T | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return convert(value)

    return convert_optional


def auto_or(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """``convert``, except that None and "auto" (any case) mean None: decided at run time."""

    def convert_or_auto(value: Any) -> T | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        return convert(value)

    return convert_or_auto


def secret_list(value: Any) -> tuple[str, ...]:
    """One or more signing secrets: whitespace-separated text or a sequence.

    An HMAC key shorter than 32 bytes is within reach of an offline guess from
    a single captured cookie; ``python -c 'import secrets;
    print(secrets.token_urlsafe(48))'`` makes a good one.
    """
    given = value.split() if isinstance(value, str) else list(value or ())
    if not given:
        raise ValueError("a secret is required")
    for position, secret in enumerate(given, start=1):
        size = len(str(secret).encode("utf-8"))
        if size < MIN_SECRET_BYTES:
            raise ValueError(
                f"secret #{position} is {size} bytes; at least {MIN_SECRET_BYTES} are needed so "
                "that a captured cookie cannot be used to guess it (make one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
    return tuple(str(secret) for secret in given)


def token(value: Any) -> str:
    name = required_text(value)
    if not set(name) <= _TOKEN_CHARACTERS:
        raise ValueError("must be letters, digits and !#$%&'*+-.^_`|~ only (no spaces, ';', '=' or quotes)")
    return name


def samesite_value(value: Any) -> str | None:
    if value is None:
        return None
    canonical = {"strict": "Strict", "lax": "Lax", "none": "None"}
    try:
        return canonical[str(value).strip().lower()]
    except KeyError:
        raise ValueError("must be Strict, Lax or None") from None


def choice(*allowed: str) -> Callable[[Any], str]:
    """A converter to one of ``allowed`` (any case)."""

    def convert(value: Any) -> str:
        spelled = str(value).strip().lower()
        if spelled not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return spelled

    return convert


def identifier(value: Any) -> str:
    name = required_text(value)
    if not name.isidentifier():
        raise ValueError("must be a Python identifier (a request attribute's name)")
    return name


def table_name(value: Any) -> str:
    name = text(value)
    check_table_name(name)
    return name


def serializer_object(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    resolved = DottedNameResolver().maybe_resolve(value.strip() if isinstance(value, str) else value)
    if not (callable(getattr(resolved, "dumps", None)) and callable(getattr(resolved, "loads", None))):
        raise ValueError("must name an object with dumps() and loads()")
    return resolved


# -- the options objects ------------------------------------------------------


def option(default: Any, convert: Callable[[Any], Any]) -> Any:
    """A dataclass field whose value ``convert`` checks and converts."""
    return field(default=default, metadata={"convert": convert})


def _convert_fields(options: Any) -> None:
    for each in fields(options):
        convert = each.metadata.get("convert")
        if convert is None:
            continue
        try:
            object.__setattr__(options, each.name, convert(getattr(options, each.name)))
        except (ValueError, TypeError, ImportError, AttributeError) as exc:
            raise OptionError(each.name, str(exc)) from None


class _Options:
    """Shared by the options classes: conversion on construction, and copies."""

    def __post_init__(self) -> None:
        _convert_fields(self)
        self._check()

    def _check(self) -> None:
        """Checks that span several fields; each raises OptionError."""

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (and checked again)."""
        return replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(each.name for each in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def build(cls: type[T], options: T | None, overrides: dict[str, Any]) -> T:
        """``options`` (or the defaults) with ``overrides`` applied."""
        if options is None:
            return cls(**overrides)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}")
        return replace(options, **overrides) if overrides else options  # type: ignore[type-var]


@dataclass(frozen=True)
class StoreOptions(_Options):
    """How a :class:`~pyramid_pgstore.PGStore` reaches and uses its table.

    :param table: ``name`` or ``schema.name``; the schema must exist.
    :param pool_min: connections opened when a process first uses the pool.
    :param pool_max: most connections open at once; idle ones are kept.
    :param pool_timeout: seconds a checkout waits for a free connection
        before :class:`~pyramid_pgstore.PoolTimeout`; also the default libpq
        ``connect_timeout``.
    :param statement_timeout: seconds after which PostgreSQL cancels a
        statement (a lock held on the table, an overloaded server); None
        leaves the server's setting.
    :param synchronous_commit: False commits session writes without waiting
        for the WAL flush (for those transactions only).
    :param prepare_statements: prepare the per-request statements once per
        connection; not behind PgBouncer in transaction mode.
    :param create_table: create the table and its index if missing.
    :param distributed: whether the table is managed by Citus, so that the
        store uses the statements Citus accepts; None (``auto``): found out
        when the store first looks at its table. ``true`` works on a table
        not distributed yet, so apps can switch before the table is.
    :param max_length: largest serialized session in bytes; 0 = unlimited.
    :param serializer: ``dumps``/``loads`` object (or its dotted name); JSON by default.
    :param cleanup_interval: seconds between cleanup passes run by a thread
        of the store; 0 runs none.
    :param failover_timeout: seconds a statement waits for a writable server
        (a failover, a restart) before :class:`~pyramid_pgstore.StoreUnavailable`,
        at most ``pool_timeout``; 0 fails at once.
    :param commit_timeout: seconds after which a statement is canceled from
        the client, and fails: bounds a commit waiting for a synchronous
        standby that is gone, which no server setting bounds; None: no limit.
    """

    table: str = option(DEFAULT_TABLE, table_name)
    pool_min: int = option(1, number(int, 0, MAX_POOL_SIZE))
    pool_max: int = option(10, number(int, 1, MAX_POOL_SIZE))
    pool_timeout: float = option(30.0, number(float, 0.001, MAX_POOL_TIMEOUT))
    statement_timeout: float | None = option(None, optional(number(float, 0.001, MAX_STATEMENT_TIMEOUT)))
    synchronous_commit: bool = option(True, boolean)
    prepare_statements: bool = option(False, boolean)
    create_table: bool = option(True, boolean)
    distributed: bool | None = option(None, auto_or(boolean))
    max_length: int = option(4096, number(int, 0, MAX_LENGTH))
    serializer: Any = option(None, serializer_object)
    cleanup_interval: float = option(0, number(float, 0, MAX_SECONDS))
    failover_timeout: float = option(5.0, number(float, 0, MAX_POOL_TIMEOUT))
    commit_timeout: float | None = option(10.0, optional(number(float, 0.1, MAX_STATEMENT_TIMEOUT)))

    def _check(self) -> None:
        if self.pool_min > self.pool_max:
            raise OptionError("pool_min", f"must not be over pool_max ({self.pool_max})")

    @property
    def failover_wait(self) -> float:
        """How long a statement waits for a writable server: ``failover_timeout``,
        never more than ``pool_timeout``."""
        return min(self.failover_timeout, self.pool_timeout)


@dataclass(frozen=True)
class CookieOptions(_Options):
    """The session cookie: its signing secrets and attributes.

    :param secret: the signing secret, or several (whitespace-separated in
        one string, or a sequence): the first signs, all verify. Each is at
        least 32 bytes.
    :param cookie_name: the cookie's name, an RFC 6265 token.
    :param max_age: Max-Age in seconds; None makes a browser-session cookie.
    :param path, domain, secure, httponly: the cookie's attributes.
    :param samesite: ``"Strict"``, ``"Lax"``, ``"None"`` (needs ``secure``) or None.
    """

    secret: Sequence[str] = option((), secret_list)
    cookie_name: str = option("session", token)
    max_age: int | None = option(None, optional(number(int, 1, MAX_SECONDS)))
    path: str = option("/", text)
    domain: str | None = option(None, optional_text)
    secure: bool = option(False, boolean)
    httponly: bool = option(True, boolean)
    samesite: str | None = option("Lax", samesite_value)

    def _check(self) -> None:
        if self.samesite == "None" and not self.secure:
            raise OptionError("samesite", "None needs secure = true (browsers require it)")


@dataclass(frozen=True)
class SessionOptions(_Options):
    """How long a session lives, when it is written, and whose it is.

    :param timeout: seconds of inactivity after which the stored session
        expires; None for no idle expiry (then the cookie's ``max_age``, if
        set, bounds the stored session instead, and with neither it never
        expires).
    :param reissue_time: a read refreshes the expiry at most this often;
        None: a tenth of the lifetime; 0 refreshes on every request.
    :param set_on_exception: save the session and send the cookie even when
        the view raised an exception.
    :param userid_key: the session key whose value names the session's user
        (what Pyramid's ``SessionAuthenticationHelper`` writes); it is stored,
        as text, in the row's ``userid`` column.
    :param renew_on_login: give the session a new id, keeping its data,
        whenever the value under ``userid_key`` changes (log in, switch
        user, log out without ``invalidate()``).
    :param track_client: record the client's address and User-Agent with
        the row when it is written.
    :param max_lifetime: seconds from the session's creation after which it
        ends however active it is (an absolute timeout); None: no limit.
    :param transaction: under pyramid_tm, ``"auto"`` writes the session only
        if the request's transaction commits, ``"shared"`` writes it in the
        app's SQLAlchemy session's database transaction, ``"none"`` ignores
        the transaction (see ``pyramid_pgstore.tm``).
    :param dbsession: with ``"shared"``, the request attribute holding the
        app's SQLAlchemy session.
    :param max_sessions_per_user: after a login, the user's live sessions
        beyond this many end, least recently seen first; None: no limit.
    """

    timeout: float | None = option(1200, optional(number(float, 1, MAX_SECONDS)))
    reissue_time: float | None = option(None, optional(number(float, 0, MAX_SECONDS)))
    set_on_exception: bool = option(True, boolean)
    userid_key: str = option("auth.userid", required_text)
    renew_on_login: bool = option(True, boolean)
    track_client: bool = option(True, boolean)
    max_lifetime: float | None = option(None, optional(number(float, 1, MAX_SECONDS)))
    transaction: str = option("auto", choice("auto", "shared", "none"))
    dbsession: str = option("dbsession", identifier)
    max_sessions_per_user: int | None = option(None, optional(number(int, 1, MAX_POOL_SIZE)))

    def lifetime(self, cookie: CookieOptions) -> float | None:
        """Seconds a stored session lives without use: the timeout, else the
        cookie's max_age, else None (forever)."""
        return self.timeout if self.timeout is not None else cookie.max_age

    def refresh_after(self, cookie: CookieOptions) -> float | None:
        """Seconds after which a read refreshes the expiry (None: never).

        :raises OptionError: ``reissue_time`` is not under the lifetime, so a
            session that is only read would expire while in use.
        """
        lifetime = self.lifetime(cookie)
        if lifetime is None:
            return None
        if self.reissue_time is None:
            return lifetime / 10
        if self.reissue_time >= lifetime:
            raise OptionError(
                "reissue_time",
                f"must be under the session lifetime ({lifetime:g} s), "
                "or a session that is only read would expire while in use",
            )
        return self.reissue_time
