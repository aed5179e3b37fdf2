"""The connection string: checked once, completed with safe libpq defaults,
and never repeated with its password."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

import psycopg2
from psycopg2.extensions import parse_dsn

from .options import OptionError

# An SQLAlchemy URL's scheme names the driver: postgresql+psycopg://...
_DRIVER_IN_SCHEME = re.compile(r"^\s*(postgres(?:ql)?)\+\w+://")


def connect_kwargs(dsn: str, pool_timeout: float) -> dict[str, Any]:
    """libpq parameters: the DSN, plus defaults it does not set itself.

    An SQLAlchemy URL (``postgresql+psycopg://...``, an app's
    ``sqlalchemy.url``) is read as the libpq URL it names: the store's
    connections are psycopg2's whatever driver the app's engine uses.

    :raises OptionError: (named ``dsn``) libpq cannot parse it.
    """
    dsn = _DRIVER_IN_SCHEME.sub(r"\1://", dsn)
    try:
        given = parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise OptionError("dsn", redact(str(exc).strip(), dsn)) from None
    kwargs: dict[str, Any] = {"dsn": dsn}
    seconds = max(2, int(pool_timeout + 0.999))
    if "connect_timeout" not in given:
        # libpq waits forever by default; 2 s is its smallest effective value.
        # It applies to each host in turn: with several (a failover setup),
        # one that is down without answering must not hold every new
        # connection for a whole pool_timeout before the next is tried.
        several = "," in given.get("host", "") or "," in given.get("hostaddr", "")
        kwargs["connect_timeout"] = 2 if several else seconds
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


def as_url(dsn: str, scheme: str = "postgresql+psycopg2") -> str:
    """``dsn`` (either form) as a URL, SQLAlchemy's ``create_engine`` form by
    default: ``postgresql+psycopg2://user:password@host:port/dbname``; other
    parameters become the query string."""
    given = parse_dsn(dsn)
    user = quote(given.pop("user", ""), safe="")
    password = given.pop("password", None)
    userinfo = user + (":" + quote(password, safe="") if password is not None else "")
    host = given.pop("host", "")
    port = given.pop("port", None)
    netloc = (userinfo + "@" if userinfo else "") + host + (f":{port}" if port else "")
    path = quote(given.pop("dbname", ""), safe="")
    query = "&".join(f"{quote(key)}={quote(value, safe='')}" for key, value in given.items())
    return f"{scheme}://{netloc}/{path}" + (f"?{query}" if query else "")


# libpq's connection keywords: in ``password=a b c host=x``, the words up to
# the next of these are taken for pieces of the password.
_KEYWORDS = (
    "host hostaddr port dbname user password passfile channel_binding connect_timeout client_encoding "
    "options application_name fallback_application_name keepalives keepalives_idle keepalives_interval "
    "keepalives_count tcp_user_timeout replication gssencmode sslmode requiressl sslcompression sslcert "
    "sslkey sslpassword sslcertmode sslrootcert sslcrl sslcrldir sslsni requirepeer require_auth "
    "ssl_min_protocol_version ssl_max_protocol_version krbsrvname gsslib gssdelegation service "
    "target_session_attrs load_balance_hosts"
).split()
_NEXT_KEYWORD = "(?:" + "|".join(_KEYWORDS) + r")\s*="
_KEYWORD_PASSWORD = re.compile(
    r"\b(?:ssl)?password\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'?|\S*)"  # the value, quoted or not
    r"(?P<rest>(?:\s+(?!" + _NEXT_KEYWORD + r")\S+)*)"  # words libpq would misread
)
_URL_USERINFO = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://(?P<userinfo>[^/?#\s]*)@")
_URL_PASSWORD_PARAMETER = re.compile(r"[?&]password=([^&#\s]*)")
_QUOTED = re.compile(r'"([^"]*)"')


def _secrets(text: str) -> set[str]:
    """Every piece of ``text`` (a DSN, or a message quoting one) that may be
    (part of) a password, in both the keyword form (also an unquoted password
    with spaces, which libpq reads as several words) and the URL form (also
    percent-encoded)."""
    found: set[str] = set()
    for match in _KEYWORD_PASSWORD.finditer(text):
        found.add(match.group("value").strip("'"))
        found.update(re.split(r"[\s=]+", match.group("rest")))
    for match in _URL_USERINFO.finditer(text):
        if ":" in match.group("userinfo"):
            found.add(match.group("userinfo").split(":", 1)[1])
    found.update(_URL_PASSWORD_PARAMETER.findall(text))
    found.update({unquote(piece) for piece in found})
    return {piece for piece in found if piece}


def redact(message: str, dsn: str = "") -> str:
    """``message`` with every password it holds replaced by ``***``: those of
    ``dsn``, and any in a DSN the message quotes itself.

    libpq quotes the token it could not parse (``invalid percent-encoded
    token: "correct-horse%zz"``); a quoted token that overlaps a password is
    hidden whole.
    """
    pieces = _secrets(dsn) | _secrets(message)
    if not pieces:
        return message

    def hide_quoted(match: re.Match[str]) -> str:
        token = match.group(1)
        overlaps = any(piece in token or (len(token) >= 3 and token in piece) for piece in pieces)
        return '"***"' if overlaps else match.group(0)

    message = _QUOTED.sub(hide_quoted, message)
    for piece in sorted(pieces, key=len, reverse=True):
        message = message.replace(piece, "***")
    return message
