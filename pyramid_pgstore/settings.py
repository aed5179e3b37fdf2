"""The ``pgstore.*`` settings: one table of names, defaults and parsers.

:data:`SETTINGS` is the single list of what ``config.include`` reads; the
README's table is checked against it by a test. A bad value is a
``ConfigurationError`` naming the setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pyramid.exceptions import ConfigurationError
from pyramid.path import DottedNameResolver

from .cookie import check_cookie_name, check_secrets

PREFIX = "pgstore."
_NONE = ("", "none", "null", "off")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _required(value: Any) -> str:
    if value is None or str(value).strip() == "":
        raise ValueError("is required")
    return str(value).strip()


def _text(value: Any) -> str:
    return str(value).strip()


def _optional_text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be true or false")


def _number(value: Any, kind: type = float, minimum: float = 0) -> Any:
    try:
        number = kind(str(value).strip()) if not isinstance(value, int | float) else kind(value)
    except (ValueError, OverflowError):
        raise ValueError(f"must be a{'n integer' if kind is int else ' number'}") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    if number < minimum:
        raise ValueError(f"must be {minimum} or more")
    return number


def _seconds_or_none(value: Any, minimum: float = 0) -> float | None:
    if value is None or str(value).strip().lower() in _NONE:
        return None
    return _number(value, float, minimum)


def _int_or_none(value: Any, minimum: int = 0) -> int | None:
    if value is None or str(value).strip().lower() in _NONE:
        return None
    return _number(value, int, minimum)


def _cookie_name(value: Any) -> str:
    name = _required(value)
    check_cookie_name(name)
    return name


def _secrets(value: Any) -> list[str]:
    secret_list = _required(value).split()
    check_secrets(secret_list)
    return secret_list


def _samesite(value: Any) -> str | None:
    if value is None:
        return None
    canonical = {"strict": "Strict", "lax": "Lax", "none": "None"}
    try:
        return canonical[str(value).strip().lower()]
    except KeyError:
        raise ValueError("must be Strict, Lax or None") from None


def _serializer(value: Any) -> Any:
    if value is None or str(value).strip() == "":
        return None
    serializer = DottedNameResolver().maybe_resolve(value.strip() if isinstance(value, str) else value)
    if not (callable(getattr(serializer, "dumps", None)) and callable(getattr(serializer, "loads", None))):
        raise ValueError("must name an object with dumps() and loads()")
    return serializer


class Setting(NamedTuple):
    name: str  # without the "pgstore." prefix
    default: Any  # a raw value, parsed like a configured one
    parse: Callable[[Any], Any]


SETTINGS: tuple[Setting, ...] = (
    Setting("dsn", None, _required),
    Setting("secret", None, _secrets),
    Setting("cookie_name", "session", _cookie_name),
    Setting("max_age", None, lambda v: _int_or_none(v, 1)),
    Setting("path", "/", _text),
    Setting("domain", None, _optional_text),
    Setting("secure", False, _bool),
    Setting("httponly", True, _bool),
    Setting("samesite", "Lax", _samesite),
    Setting("timeout", 1200, lambda v: _seconds_or_none(v, 1)),
    Setting("reissue_time", None, _seconds_or_none),
    Setting("set_on_exception", True, _bool),
    Setting("max_length", 4096, lambda v: _number(v, int)),
    Setting("table", "http_sessions", _required),
    Setting("create_table", True, _bool),
    Setting("pool_min", 1, lambda v: _number(v, int)),
    Setting("pool_max", 10, lambda v: _number(v, int, 1)),
    Setting("pool_timeout", 30, lambda v: _number(v, float, 0.001)),
    Setting("statement_timeout", None, lambda v: _seconds_or_none(v, 0.001)),
    Setting("synchronous_commit", True, _bool),
    Setting("prepare_statements", False, _bool),
    Setting("cleanup_interval", 0, _number),
    Setting("serializer", None, _serializer),
)


def parse_settings(settings: Mapping[str, Any], *, need_secret: bool = True) -> dict[str, Any]:
    """Read every ``pgstore.*`` setting; return them by name, without prefix.

    ``need_secret=False`` is for tools that never see a cookie (the cleanup
    script): a missing secret is then no error.

    :raises ConfigurationError: a required setting is missing, a value does
        not parse, or a ``pgstore.*`` key is not a known setting (a typo).
    """
    known = {setting.name for setting in SETTINGS}
    unknown = sorted(key for key in settings if key.startswith(PREFIX) and key[len(PREFIX) :] not in known)
    if unknown:
        listed = ", ".join(PREFIX + name for name in sorted(known))
        raise ConfigurationError(f"unknown setting {', '.join(unknown)}; known: {listed}")
    parsed = {}
    for setting in SETTINGS:
        raw = settings.get(PREFIX + setting.name, setting.default)
        if setting.name == "secret" and not need_secret and not raw:
            parsed["secret"] = []
            continue
        try:
            parsed[setting.name] = setting.parse(raw)
        except (ValueError, ImportError, AttributeError) as exc:
            shown = "<hidden>" if setting.name in ("secret", "dsn") else repr(raw)
            raise ConfigurationError(f"{PREFIX}{setting.name}: {exc} (got {shown})") from None
    if parsed["pool_min"] > parsed["pool_max"]:
        raise ConfigurationError(
            f"{PREFIX}pool_min: must not be over pgstore.pool_max ({parsed['pool_max']})"
        )
    lifetime = parsed["timeout"] if parsed["timeout"] is not None else parsed["max_age"]
    if parsed["reissue_time"] is not None and lifetime is not None and parsed["reissue_time"] >= lifetime:
        raise ConfigurationError(
            f"{PREFIX}reissue_time: must be under the session lifetime ({lifetime:g} s), "
            "or a session that is only read would expire while in use"
        )
    if parsed["samesite"] == "None" and not parsed["secure"]:
        raise ConfigurationError(f"{PREFIX}samesite: None needs {PREFIX}secure = true (browsers require it)")
    return parsed
