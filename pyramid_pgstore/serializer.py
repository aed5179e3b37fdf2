"""Session data to text and back: JSON by default, never pickle.

A serializer is any object with ``dumps(data) -> str | bytes`` and
``loads(text) -> data`` that raises ``ValueError`` on bad input (WebOb's
contract). :func:`serialize` adds what the store needs around it: the
``max_length`` check and an error that names the key a value cannot be
stored under.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from .errors import SessionTooLarge


class Serializer(Protocol):
    """Turns session data into text and back; ``loads`` raises ValueError on bad input."""

    def dumps(self, appstruct: Any) -> str | bytes: ...

    def loads(self, cstruct: str) -> Any: ...


class JSONSerializer:
    """The default serializer: compact JSON. Pickle is never used."""

    def dumps(self, appstruct: Any) -> str:
        return json.dumps(appstruct, separators=(",", ":"))

    def loads(self, cstruct: str) -> Any:
        return json.loads(cstruct)


def serialize(serializer: Serializer, data: Mapping[str, Any], max_length: int) -> str:
    """``data`` as the text to store; no database work.

    :raises SessionTooLarge: the result is over ``max_length`` bytes (0: no limit).
    :raises TypeError: a value cannot be serialized; the message names its key.
    """
    try:
        payload = serializer.dumps(data if isinstance(data, dict) else dict(data))
    except TypeError as exc:
        raise TypeError(_unserializable(serializer, data, exc)) from exc
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    if max_length:
        size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
        if size > max_length:
            raise SessionTooLarge(size, max_length)
    return payload


def deserialize(serializer: Serializer, payload: str) -> dict[str, Any]:
    """The stored text as session data.

    :raises ValueError: it does not deserialize, or not to a mapping.
    """
    data = serializer.loads(payload)
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    return data


def _unserializable(serializer: Serializer, data: Mapping[str, Any], exc: TypeError) -> str:
    for key, value in data.items():
        try:
            serializer.dumps({key: value})
        except TypeError as inner:
            return f"session value for key {key!r} cannot be serialized: {inner}"
    return f"session data cannot be serialized: {exc}"
