"""The ``pgstore.*`` settings: ini text in, options objects out.

:data:`SETTINGS` is the single list of what ``config.include`` reads, in the
order the table of docs/settings.rst gives them (a test checks the table
against it).
Each setting is a field of one of the options objects
(:mod:`pyramid_pgstore.options`), which holds its default and its checks;
this module only finds the keys, and turns a refused value into a
``ConfigurationError`` naming the setting.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields
from typing import Any

from pyramid.exceptions import ConfigurationError

from .options import CookieOptions, OptionError, SessionOptions, StoreOptions, optional_text

PREFIX = "pgstore."
_HIDDEN = ("secret", "dsn")  # never repeated in an error message


@dataclass(frozen=True)
class Setting:
    """One ``pgstore.*`` key; ``options`` is the options class holding it
    (None for ``dsn`` and ``engine``, where the store's connections come from)."""

    name: str  # without the "pgstore." prefix
    options: type | None

    @property
    def default(self) -> Any:
        if self.options is None:
            return None
        default = next(each.default for each in fields(self.options) if each.name == self.name)
        return None if default is MISSING else default


def _held_by(options: type, *names: str) -> tuple[Setting, ...]:
    return tuple(Setting(name, options) for name in names)


SETTINGS: tuple[Setting, ...] = (
    Setting("dsn", None),
    Setting("engine", None),
    *_held_by(CookieOptions, "secret", "cookie_name", "max_age", "path", "domain", "secure", "httponly"),
    *_held_by(CookieOptions, "samesite"),
    *_held_by(SessionOptions, "timeout", "reissue_time", "set_on_exception", "userid_key", "renew_on_login"),
    *_held_by(SessionOptions, "track_client", "max_lifetime", "transaction", "dbsession"),
    *_held_by(SessionOptions, "max_sessions_per_user"),
    *_held_by(StoreOptions, "max_length", "table", "create_table", "pool_min", "pool_max", "pool_timeout"),
    *_held_by(StoreOptions, "statement_timeout", "synchronous_commit", "prepare_statements"),
    *_held_by(StoreOptions, "cleanup_interval", "serializer", "failover_timeout", "commit_timeout"),
    *_held_by(StoreOptions, "distributed"),
)
# The settings an options object holds (all but where the connections come from).
_HELD = tuple(setting for setting in SETTINGS if setting.options is not None)


@dataclass(frozen=True)
class PGStoreSettings:
    """What the ``pgstore.*`` settings say. ``cookie`` is None when they
    were read without a secret (tools that never see a cookie)."""

    dsn: str | None  # None when the connections come from ``engine``
    engine: str | None  # the settings prefix of the app's SQLAlchemy engine
    store: StoreOptions
    cookie: CookieOptions | None
    session: SessionOptions

    def by_name(self) -> dict[str, Any]:
        """Every setting's value, by name without the prefix."""
        holders: dict[type | None, Any] = {
            StoreOptions: self.store,
            CookieOptions: self.cookie,
            SessionOptions: self.session,
        }
        values: dict[str, Any] = {"dsn": self.dsn, "engine": self.engine}
        for setting in _HELD:
            values[setting.name] = getattr(holders[setting.options], setting.name, None)
        return values


def parse_settings(settings: Mapping[str, Any], *, need_secret: bool = True) -> PGStoreSettings:
    """Read every ``pgstore.*`` setting into options objects.

    ``need_secret=False`` is for tools that never see a cookie (the cleanup
    script): a missing secret is then no error.

    :raises ConfigurationError: a required setting is missing, a value is
        refused, or a ``pgstore.*`` key is not a known setting (a typo).
    """
    known = {setting.name for setting in SETTINGS}
    unknown = sorted(key for key in settings if key.startswith(PREFIX) and key[len(PREFIX) :] not in known)
    if unknown:
        listed = ", ".join(PREFIX + name for name in sorted(known))
        raise ConfigurationError(f"unknown setting {', '.join(unknown)}; known: {listed}")
    given: dict[type, dict[str, Any]] = {StoreOptions: {}, CookieOptions: {}, SessionOptions: {}}
    for setting in _HELD:
        if PREFIX + setting.name in settings:
            given[setting.options][setting.name] = settings[PREFIX + setting.name]  # type: ignore[index]
    dsn, engine = (optional_text(settings.get(PREFIX + name)) for name in ("dsn", "engine"))
    with configuration_errors(settings):
        if (dsn is None) == (engine is None):
            reason = (
                "is required (or pgstore.engine)" if dsn is None else "and pgstore.engine: give one, not both"
            )
            raise OptionError("dsn", reason)
        store = StoreOptions(**given[StoreOptions])
        cookie = None
        if need_secret or settings.get(PREFIX + "secret"):
            cookie = CookieOptions(**given[CookieOptions])
        session = SessionOptions(**given[SessionOptions])
        if cookie is not None:
            session.refresh_after(cookie)  # checks reissue_time against the lifetime
    return PGStoreSettings(dsn, engine, store, cookie, session)


@contextmanager
def configuration_errors(settings: Mapping[str, Any]) -> Iterator[None]:
    """An :class:`OptionError` raised in the block becomes a
    ``ConfigurationError`` naming the ``pgstore.*`` setting (and the value
    given, unless it is a secret or the DSN)."""
    try:
        yield
    except OptionError as exc:
        shown = "<hidden>" if exc.name in _HIDDEN else repr(settings.get(PREFIX + exc.name))
        raise ConfigurationError(f"{PREFIX}{exc.name}: {exc.reason} (got {shown})") from None
