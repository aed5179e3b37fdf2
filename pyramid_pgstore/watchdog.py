"""Canceling, from the client, a statement that runs too long.

A commit on a primary whose ``synchronous_standby_names`` names a standby
that is gone (a server promoted in a failover keeps the setting) waits for
that standby without end, and no server-side timeout ends the wait:
``statement_timeout`` is not checked while a commit waits. The only way out
is a cancel request, which libpq sends on a connection of its own
(``connection.cancel()``). One thread per process looks at the statements in
flight a few times a second and cancels those past their deadline.

Starting a watch is one dict insert; stopping it one dict delete, which
also decides the race with the watching thread: whoever takes the watch
out of the dict first owns it. Nothing on the request path
waits for this thread, except a statement whose cancel is being sent, so
that the cancel cannot land on the connection's next statement.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger("pyramid_pgstore")

_POLL = 0.1  # seconds between looks at the statements in flight


class Watchdog:
    """Cancels statements that outlive their deadline.

    A statement in flight is an entry ``key: (connection, deadline)``, its
    key a number of its own. When the watching thread takes one past its
    deadline, it notes the key in ``_canceling`` first (False: the cancel is
    being sent; True: sent), so that a :meth:`stop` that finds its entry
    gone knows to wait.
    """

    def __init__(self) -> None:
        self._inflight: dict[int, tuple[Any, float]] = {}
        self._canceling: dict[int, bool] = {}
        self._keys = itertools.count()
        self._started = False  # this process has the watching thread
        self._lock = threading.Lock()
        self._sent = threading.Condition()  # a cancel was sent
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A fork has no watching thread, and its parent's statements are not its own.
        self._inflight, self._canceling, self._started = {}, {}, False
        self._lock, self._sent = threading.Lock(), threading.Condition()

    def start(self, conn: Any, timeout: float | None) -> int | None:
        """Watch ``conn``'s statement for ``timeout`` seconds (None: not at
        all); return what :meth:`stop` takes."""
        if timeout is None:
            return None
        if not self._started:
            self._start_thread()
        key = next(self._keys)
        self._inflight[key] = (conn, time.monotonic() + timeout)
        return key

    def stop(self, key: int | None) -> bool:
        """The statement is over; return whether it was canceled, in which
        case the connection must be discarded, not reused: a cancel arrives
        at the server on its own connection, and could otherwise reach the
        next statement. Waits for a cancel being sent."""
        if key is None or self._inflight.pop(key, None) is not None:
            return False  # taken back before the watching thread took it: never canceled
        with self._sent:
            while not self._canceling[key]:
                self._sent.wait()
            del self._canceling[key]
        return True

    def _start_thread(self) -> None:
        with self._lock:
            if self._started:
                return
            thread = threading.Thread(target=self._watch, name="pgstore-watchdog", daemon=True)
            thread.start()
            self._started = True

    def _watch(self) -> None:
        while True:
            time.sleep(_POLL)
            now = time.monotonic()
            for key, (conn, deadline) in list(self._inflight.items()):
                if now < deadline:
                    continue
                self._canceling[key] = False  # before taking it, for a stop() that finds it gone
                if self._inflight.pop(key, None) is not None:
                    self._cancel(key, conn)
                else:  # its statement ended first
                    del self._canceling[key]

    def _cancel(self, key: int, conn: Any) -> None:
        try:
            conn.cancel()
        except Exception as exc:  # the connection may be gone already; the thread must live on
            log.debug("could not cancel a statement past commit_timeout: %s", exc)
        with self._sent:
            self._canceling[key] = True
            self._sent.notify_all()


watchdog = Watchdog()
