"""Canceling, from the client, a statement that runs too long.

A commit on a primary whose ``synchronous_standby_names`` names a standby
that is gone (a server promoted in a failover keeps the setting) waits for
that standby without end, and no server-side timeout ends the wait:
``statement_timeout`` is not checked while a commit waits. The only way out
is a cancel request, which libpq sends on a connection of its own
(``connection.cancel()``). One thread per process looks at the statements in
flight a few times a second and cancels those past their deadline.

Starting a watch is one dict insert, stopping it one delete: nothing on the
request path waits for this thread.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

_POLL = 0.1  # seconds between looks at the statements in flight


class Watchdog:
    """Cancels statements that outlive their deadline."""

    def __init__(self) -> None:
        self._inflight: dict[int, tuple[float, Any]] = {}
        self._pid = 0  # the process whose thread watches (a fork has none)
        self._lock = threading.Lock()

    def start(self, conn: Any, timeout: float | None) -> int | None:
        """Watch ``conn``'s statement for ``timeout`` seconds (None: not at all)."""
        if timeout is None:
            return None
        if self._pid != os.getpid():
            self._start_thread()
        key = id(conn)
        self._inflight[key] = (time.monotonic() + timeout, conn)
        return key

    def stop(self, key: int | None) -> None:
        if key is not None:
            self._inflight.pop(key, None)

    def _start_thread(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._inflight.clear()  # a parent's statements are not this process's
            thread = threading.Thread(target=self._watch, name="pgstore-watchdog", daemon=True)
            thread.start()
            self._pid = os.getpid()

    def _watch(self) -> None:
        while True:
            time.sleep(_POLL)
            now = time.monotonic()
            for key, (deadline, conn) in list(self._inflight.items()):
                if now >= deadline and self._inflight.pop(key, None) is not None:
                    try:
                        conn.cancel()
                    except Exception:  # noqa: S110 - the connection may be gone already
                        pass


watchdog = Watchdog()
