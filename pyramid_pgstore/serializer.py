"""Session data to text and back: JSON by default, never pickle.

A serializer is any object with ``dumps(data) -> str | bytes`` and
``loads(text) -> data`` that raises ``ValueError`` on bad input (WebOb's
contract). Around it, :func:`encode` and :func:`check` add what the store
needs: text for a ``text`` column, the ``max_length`` check, and errors that
name the key a value cannot be stored under.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from .errors import SessionTooLarge

# A UTF-16 surrogate on its own (no pair): valid in a Python str, not in UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class Serializer(Protocol):
    """Turns session data into text and back; ``loads`` raises ValueError on bad input."""

    def dumps(self, appstruct: Any) -> str | bytes: ...

    def loads(self, cstruct: str) -> Any: ...


# One encoder for every session (json.dumps with arguments of its own builds
# a JSONEncoder on every call: 8k instructions a write, bench/counts.py).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()  # what json.loads uses, without its checks of its arguments

#: JSON's scalar types: values with nothing inside them, so no key to look
#: at and nothing to change in place.
SCALARS = frozenset({str, int, float, bool, type(None)})


class JSONSerializer:
    """The default serializer: compact JSON, stored as UTF-8. Pickle is never used.

    Text is kept as UTF-8 rather than ``\\u`` escapes, so ``max_length``
    counts what a value really takes (500 emoji are 2,000 bytes, not 6,000).
    The characters a PostgreSQL ``text`` value cannot hold stay escaped:
    NUL (``\\u0000``, as JSON always writes it) and lone surrogates, so they
    round-trip. (A high surrogate followed by a low one is, in JSON, the one
    character they encode, and comes back as it, as with ``json`` itself.)
    """

    def dumps(self, appstruct: Any) -> str:
        text = _ENCODER.encode(appstruct)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
        return text

    def loads(self, cstruct: str) -> Any:
        return _DECODER.decode(cstruct)


def encode(serializer: Serializer, data: Mapping[str, Any]) -> str:
    """``data`` as the text to store; no database work.

    :raises TypeError: a value cannot be serialized; the message names its key.
    """
    try:
        payload = serializer.dumps(data if isinstance(data, dict) else dict(data))
    except TypeError as exc:
        raise TypeError(_unserializable(serializer, data, exc)) from exc
    return payload.decode("utf-8") if isinstance(payload, bytes) else payload


def check(serializer: Serializer, data: Mapping[str, Any], payload: str, max_length: int) -> None:
    """Refuse ``payload`` (``data`` encoded) before it is written.

    :raises SessionTooLarge: over ``max_length`` UTF-8 bytes (0: no limit).
    :raises TypeError: JSON would silently merge two keys of one mapping
        (``{1: "a", "1": "b"}``); the message names the key.
    """
    if max_length:
        size = len(payload) if payload.isascii() else len(payload.encode("utf-8", "surrogatepass"))
        if size > max_length:
            raise SessionTooLarge(size, max_length)
    if isinstance(serializer, JSONSerializer):
        _refuse_merged_keys(data)


def serialize(serializer: Serializer, data: Mapping[str, Any], max_length: int) -> str:
    """:func:`encode` then :func:`check`: the text to store, refused if it cannot be."""
    payload = encode(serializer, data)
    check(serializer, data, payload, max_length)
    return payload


def deserialize(serializer: Serializer, payload: str) -> dict[str, Any]:
    """The stored text as session data.

    :raises ValueError: it does not deserialize, or not to a mapping.
    """
    data = serializer.loads(payload)
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    return data


def _json_key(key: Any) -> str:
    """The object key JSON writes for a dict key (as ``json.dumps`` does)."""
    if isinstance(key, str):
        return key
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, float):
        if key != key:
            return "NaN"
        if key in (float("inf"), float("-inf")):
            return "Infinity" if key > 0 else "-Infinity"
        return float.__repr__(key)
    return int.__repr__(key)


def _refuse_merged_keys(data: Mapping[str, Any]) -> None:
    """Look in ``data`` and the mappings inside it for two keys that JSON
    writes alike; only a mapping with a non-str key can have them."""
    _refuse_alike(data, None)
    pending: list[tuple[Any, Any]] = [item for item in data.items() if type(item[1]) not in SCALARS]
    while pending:
        top, value = pending.pop()
        if isinstance(value, dict):
            _refuse_alike(value, top)
            pending.extend((top, item) for item in value.values())
        elif isinstance(value, list | tuple):
            pending.extend((top, item) for item in value)


def _refuse_alike(mapping: Mapping[Any, Any], top: Any) -> None:
    if all(type(key) is str for key in mapping):
        return
    seen: dict[str, Any] = {}
    for key in mapping:
        written = _json_key(key)
        if written in seen:
            where = "the session" if top is None else f"session value for key {top!r}"
            raise TypeError(
                f"{where} has the keys {seen[written]!r} and {key!r}, which JSON writes "
                f"alike ({written!r}): one value would be lost"
            )
        seen[written] = key


def _unserializable(serializer: Serializer, data: Mapping[str, Any], exc: TypeError) -> str:
    for key, value in data.items():
        try:
            serializer.dumps({key: value})
        except TypeError as inner:
            return f"session value for key {key!r} cannot be serialized: {inner}"
    return f"session data cannot be serialized: {exc}"
