"""What one request changed in a session, and putting just that on top of another's.

Two requests of one browser often overlap (a page's XHRs): each loaded the
session, each changes some keys. The store writes a request's whole session
only if nobody wrote the row since it was read (one statement, the common
case). Otherwise the request's :class:`Changes` (the top-level keys it set
or removed, a nested change counting as a change of its key) are applied to
the row as it is now, and written again: changes to different keys both
survive, the same key changed by both keeps the later write.

Flash queues (``_f_*``) are merged as queues: messages one request added
are kept even if another consumed the queue meanwhile, and messages it
consumed are not shown again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .records import Draft, SessionRecord
from .serializer import Serializer, check, deserialize, encode

log = logging.getLogger("pyramid_pgstore")

FLASH_PREFIX = "_f_"
MAX_ATTEMPTS = 20  # writes merged after a concurrent write; the last one then writes over
_MISSING = object()


class _Encoding(Protocol):
    serializer: Serializer
    max_length: int


@dataclass(frozen=True)
class _Queue:
    """A flash queue's change: messages taken from its head, messages added."""

    consumed: list[Any]
    added: list[Any]


@dataclass(frozen=True)
class Changes:
    """The keys a request set (to their values), removed, and the flash
    queues it changed."""

    set: dict[str, Any]
    removed: frozenset[str]
    queues: dict[str, _Queue]

    def apply(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """``base`` (the session as another request left it) with these changes."""
        merged = dict(base)
        merged.update(self.set)
        for key in self.removed:
            merged.pop(key, None)
        for key, queue in self.queues.items():
            current = merged.get(key)
            messages = list(current) if isinstance(current, list) else []
            for message in queue.consumed:
                if message in messages:
                    messages.remove(message)
            messages += queue.added
            if messages:
                merged[key] = messages
            else:
                merged.pop(key, None)
        return merged


def changes(
    serializer: Serializer,
    loaded_payload: str,
    current: Mapping[str, Any],
    claim: frozenset[str] = frozenset(),
) -> Changes:
    """What turned the session stored as ``loaded_payload`` into ``current``.

    Values are compared as the serializer writes them, so a change inside
    a nested value counts, and ``1`` and ``True`` differ. A key in ``claim``
    counts as set (or removed, if ``current`` lacks it) even if unchanged.
    """
    original = deserialize(serializer, loaded_payload)
    changed: dict[str, Any] = {}
    queues: dict[str, _Queue] = {}
    for key, value in current.items():
        before = original.get(key, _MISSING)
        if key not in claim and before is not _MISSING and _same(serializer, before, value):
            continue
        if _is_queue(key, before, value):
            queues[key] = _queue_change(before, value)
        else:
            changed[key] = value
    removed = {key for key in claim if key not in current}
    for key, before in original.items():
        if key not in current:
            if _is_queue(key, before, _MISSING):
                queues[key] = _Queue(consumed=list(before), added=[])
            else:
                removed.add(key)
    return Changes(changed, frozenset(removed), queues)


def _same(serializer: Serializer, before: Any, after: Any) -> bool:
    return serializer.dumps({"": before}) == serializer.dumps({"": after})


def _is_queue(key: Any, before: Any, after: Any) -> bool:
    return (
        isinstance(key, str)
        and key.startswith(FLASH_PREFIX)
        and all(value is _MISSING or isinstance(value, list) for value in (before, after))
    )


def _queue_change(before: Any, after: list[Any]) -> _Queue:
    before = [] if before is _MISSING else before
    if after[: len(before)] == before:
        return _Queue(consumed=[], added=after[len(before) :])
    return _Queue(consumed=list(before), added=list(after))  # taken, then flashed again


def write_merging(
    store: _Encoding,
    read: SessionRecord,
    draft: Draft,
    write: Callable[[SessionRecord, Draft, str | None], SessionRecord | None],
    reload: Callable[[], SessionRecord | None],
) -> SessionRecord | None:
    """Write ``draft``, made from the session as ``read``, merging on conflict.

    ``write(base, draft, version)`` writes if the row is still at ``version``
    and returns the row as written, else None; ``reload()`` reads the row
    again (None: it is gone). After a failed write, this request's changes
    are put on top of the row as reloaded, checked (``max_length``) and
    written again. Returns None if the row is gone. Under a storm of writes,
    the last try writes over whatever is there (and says so in the log).
    """
    base, attempt, delta = read, draft, None
    for tries in range(1, MAX_ATTEMPTS + 1):
        version = base.version
        if tries == MAX_ATTEMPTS:
            log.warning(
                "session %s… written %d times by others meanwhile: writing over", base.key[:12], tries
            )
            version = None
        check(store.serializer, attempt.data, attempt.payload, store.max_length)
        written = write(base, attempt, version)
        if written is not None:
            return written
        fresh = reload()
        if fresh is None:
            return None
        if fresh.payload == attempt.payload:
            # What this try would write is there: most likely this very write,
            # done before a lost connection made it look failed (the executor
            # sends it again). Merging again would add its flashes twice.
            return write(fresh, attempt, fresh.version)
        delta = delta or changes(store.serializer, read.payload, draft.data, draft.claim)
        data = delta.apply(fresh.data)
        attempt = draft.merged(data, encode(store.serializer, data))
        base = fresh
    return None
