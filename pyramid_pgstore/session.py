"""The Pyramid session: ``request.session`` backed by a :class:`PGStore`.

Cost model, per request:

* never touching ``request.session`` costs nothing (Pyramid builds the session
  on first access);
* no valid cookie: no database work; a new session that is only read writes
  no row and sets no cookie;
* a valid cookie: one SELECT when the session is first accessed;
* at the end of the request, at most one write: the row is saved if its data
  changed (with a new id if its user changed), or its expiry refreshed if
  ``reissue_time`` has passed; ``invalidate()`` ends it at once. A write that
  finds the row written by another request since it was read merges its own
  changes into that (:mod:`pyramid_pgstore.merge`) and tries again.

A response changes the cookie only for a session its request owns at the
end: one it loaded, or one it created. A request whose session turns out to
be gone (another request logged out, logged in or revoked it meanwhile)
leaves the cookie alone, since the browser may already hold a newer one,
and drops its write (logged at debug level).

The dict methods, flash queues and CSRF token: :mod:`pyramid_pgstore.sessiondict`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from pyramid.interfaces import ISession
from pyramid.request import Request
from pyramid.response import Response
from zope.interface import implementer

from . import testing, tm
from .cookie import SessionCookie, new_session_id, vary_on_cookie
from .lifetime import Lifetime
from .merge import write_merging
from .options import SessionOptions
from .records import SessionRecord, client_fields, storage_key
from .serializer import check, encode
from .sessiondict import CSRF_KEY, SessionDict
from .store import PGStore

log = logging.getLogger("pyramid_pgstore")


@implementer(ISession)
class PGStoreSession(SessionDict):
    """One request's session. Created by the factory, configured by it.

    Changes are saved when the response is finished. A change inside a nested
    value (``session['cart'].append(x)``) is saved too: the data is compared
    with what was loaded. Calling :meth:`changed` is still allowed.
    """

    # Set by session_factory on the subclass it makes: the configuration,
    # captured once, so that a request only reads its cookie.
    store: PGStore
    cookie: SessionCookie
    options: SessionOptions
    _lifetime: Lifetime

    def __init__(self, request: Request) -> None:
        self.request: Request | None = request
        self.new = True
        self.created = time.time() + testing.clock.offset
        self._id: str | None = None  # the stored session this request owns, once there is one
        self._loaded: SessionRecord | None = None  # its row as read (or last written)
        self._read_owner: str | None = None  # its owner as read (_read_token: its CSRF token)
        self._dead_id: str | None = None  # the cookie named a session that expired or went
        self._superseded = False  # ... that another request ended a moment ago
        self._refresh = False  # the expiry is due for a refresh
        self._resign = False  # the cookie was signed by a retired secret
        self._cookie_due = False  # the id changed already (renew): send it
        self._delete_cookie = False  # this request ended its own session
        self._finishing = False  # _finish is due when the response is ready
        self._finished = False
        # Under pyramid_tm (pgstore.transaction): "auto" defers every write to
        # the commit, "shared" runs it in the app's database transaction.
        mode = self.options.transaction
        self._at_commit = mode == "auto" and tm.managed(request)
        self._renew_asked = False  # with _at_commit: renew() gives a new id at commit
        self._logged_out = False  # a session was ended outside any transaction: it stays ended
        if mode == "shared" and tm.managed(request):
            self.store = tm.shared_store(self.store, request, self.options.dbsession)
        session_id, current_secret = self.cookie.read(request)
        if session_id is None:
            return
        found = self.store.lookup(session_id)
        record = found.record
        if record is not None and self._lifetime.ended(record):
            record = None
        if record is not None:
            self._adopt(session_id, record, current_secret)
        elif found.ended:
            self._superseded = True
        elif not found.unreadable:  # an unreadable row is left alone, for someone to look at
            self._dead_id = session_id

    def _adopt(self, session_id: str, record: SessionRecord, current_secret: bool) -> None:
        dict.update(self, record.data)
        self._id = session_id
        self._loaded = record
        self._read_owner, self._read_token = self._owner_of(record.data), record.data.get(CSRF_KEY)
        self.new = False
        self.created = record.created_on.timestamp()
        self._refresh = self._lifetime.due_for_refresh(record)
        self._resign = not current_secret
        self._finish_with_response()  # to see changes, refresh or re-sign

    @property
    def storage_key(self) -> str | None:
        """The key this session is stored under (a hash of its id), once saved.

        Safe to show or log: unlike the id, it cannot be used as a cookie.
        """
        return storage_key(self._id) if self._id else None

    @property
    def owner(self) -> str | None:
        """Whose session this is: the value under ``userid_key``, as text
        (what the row's ``userid`` column holds), or None."""
        return self._owner_of(self)

    def _owner_of(self, data: dict[str, Any]) -> str | None:
        value = data.get(self.options.userid_key)
        return None if value is None else str(value)

    def _new_owner_since_write(self) -> bool:
        """A new owner since the row was read or this request last wrote it (a renew)."""
        return self._loaded is not None and self._owner_of(self._loaded.data) != self.owner

    def _new_owner_since_read(self) -> bool:
        return self.owner != self._read_owner

    # -- ISession -------------------------------------------------------------

    def changed(self) -> None:
        """Mark the session as changed; it is saved when the response is finished."""
        self._finish_with_response()

    def invalidate(self) -> None:
        """End the stored session now (one round trip) and empty this one.

        The response drops the cookie, unless data is written to the session
        later in the request: that data goes to a brand-new session id.
        """
        if self._id is not None:
            self._end(self._id)
            self._delete_cookie = True
        self._id = None
        self._loaded = None
        self._refresh = self._resign = self._cookie_due = False
        dict.clear(self)
        self.new = True
        self.created = time.time() + testing.clock.offset
        self._finish_with_response()

    def _end(self, session_id: str) -> None:
        """End a stored session now. A logout must stand whatever the
        request's transaction does, so it does not wait for pyramid_tm's
        commit, and runs on the store's own connections, outside the app's
        transaction (``shared``), unless this request wrote the row in that
        transaction already (a renew), where only the transaction sees it."""
        if self._cookie_due:
            self.store.end(session_id)
        else:
            type(self).store.end(session_id)
            self._logged_out = True

    def renew(self) -> None:
        """Give the stored session a new id now, keeping its data (and this
        request's changes so far): one statement, after which the old id is
        dead. The response sends the new id. A session not stored yet gets a
        fresh id anyway, so there is nothing to do."""
        if self._id is None or self._loaded is None:
            return
        if self._at_commit:
            self._renew_asked = True
            self._finish_with_response()
            return
        self._drop_stale_csrf_token()
        payload = encode(self.store.serializer, self)
        check(self.store.serializer, self, payload, self.store.max_length)
        if not self._write(self.request, payload, renew=True):
            self._lost("was ended while being renewed")
            return
        if (merged := self._loaded.data if self._loaded else {}) != self:  # others' changes came in the merge
            dict.clear(self)
            dict.update(self, merged)
        self._cookie_due = True
        self._finish_with_response()

    # -- finishing the response -----------------------------------------------

    def _finish_with_response(self) -> None:
        if not self._finishing and self.request is not None:
            self._finishing = True
            self.request.add_response_callback(self._finish_late)

    def _finish(self, request: Request, response: Response) -> None:
        """Write what changed (one statement, unless another request wrote
        the row meanwhile) and set the cookie.

        Runs once: from :func:`session_tween_factory` (so a store error
        reaches the app's exception views), else as a response callback.
        """
        if self._finished:
            return
        self._finished = True
        self._finish_now(request, response)

    def _finish_late(self, request: Request, response: Response) -> None:
        """:meth:`_finish` as a response callback (no session tween: a factory
        set in code): pyramid_tm's transaction is over by then, so the write
        is made as with ``transaction = none``, on the store's own connections."""
        self.store = type(self).store
        self._finish(request, response)

    def _finish_now(self, request: Request, response: Response) -> None:
        """:meth:`_finish` without its run-once guard (what a transaction's commit calls)."""
        self.request = None  # the session outlives the request in some apps
        if not self.options.set_on_exception and getattr(request, "exception", None) is not None:
            self._send_done_changes(response)  # only what already happened to the row
            return
        if self._loaded is not None:
            # This response was made with a stored session's data: a shared
            # cache must not serve it to a request with another cookie.
            vary_on_cookie(response)
        self._save(request, response)

    def _logged_out_by_forget(self) -> bool:
        """The loaded session had a user, and this request removed it."""
        return self._new_owner_since_write() and self.owner is None

    def _abandon(self, response: Response) -> None:
        """The request's transaction aborted (pyramid_tm, ``auto``): nothing
        it changed is saved, and the cookie is left alone, except that a
        logout stands: ``invalidate()`` has ended the session already, and
        ``forget()`` ends it now (with whatever else it held)."""
        self.request = None
        if self._id is not None and self._logged_out_by_forget():
            self._end(self._id)
            self._id = self._loaded = None
            self._delete_cookie = True
        if self._delete_cookie and self._id is None:
            self.cookie.delete(response)

    def _send_done_changes(self, response: Response) -> None:
        if self._id is not None and self._cookie_due:
            self.cookie.set(response, self._id)
        elif self._delete_cookie and self._id is None:
            self.cookie.delete(response)

    def _save(self, request: Request, response: Response) -> None:
        loaded = self._loaded
        if self._id is None or loaded is None:
            if self:
                self._save_new(request, response, encode(self.store.serializer, self))
            elif self._delete_cookie:  # invalidate() ended the session this request had
                self.cookie.delete(response)
            return
        renew = self._renew_asked or (self.options.renew_on_login and self._new_owner_since_write())
        self._drop_stale_csrf_token()
        if renew and not self and self._logged_out_by_forget():
            # Its user logged out (forget()) and nothing is left: end it, as invalidate().
            self._end(self._id)
            self._id = self._loaded = None
            self.cookie.delete(response)
            return
        # Emptied by the app, it stays, empty: another request may be adding to it.
        payload = encode(self.store.serializer, self)
        if payload != loaded.payload or renew:
            check(self.store.serializer, self, payload, self.store.max_length)  # before any write
            if renew and self._logged_out_by_forget() and not self._cookie_due:
                # A logout keeping other data: renewed at once, outside the
                # app's transaction (shared), so that it stands if that aborts.
                self.store, self._logged_out = type(self).store, True
            if not self._write(request, payload, renew):
                self._lost("was ended or revoked by another request")
                return
            self._cookie_due |= renew
        elif self._refresh:
            ttl, cap = self._lifetime.ttl_at(loaded.age), self._lifetime.cap
            if not self.store.touch(self._id, ttl, cap=cap, **self._client(request)):
                self._lost("was ended or revoked by another request")
                return
        elif not (self._resign or self._cookie_due):
            return  # read only: nothing to write, nothing to send
        if self._cookie_due or self._resign or self.cookie.max_age is not None:
            self.cookie.set(response, self._id)

    def _save_new(self, request: Request, response: Response, payload: str) -> None:
        if self._superseded and self.owner is None:
            # Its cookie named a session ended a moment ago, most likely by a login or logout
            # whose newer cookie the browser holds: a cookie set here would replace that one.
            # A login still saves: it is the newest word on who the browser is.
            log.debug("not saving a session whose cookie another request has just replaced")
            return
        check(self.store.serializer, self, payload, self.store.max_length)  # before any write
        session_id = new_session_id()
        row = {"userid": self.owner, **self._client(request)}
        if self._dead_id is not None:
            ttl, cap = self._lifetime.ttl_at(0), self._lifetime.cap
            if not self.store.succeed(self._dead_id, session_id, payload, ttl, cap=cap, **row):
                log.debug("not saving: another request already replaced this cookie's expired session")
                return
        else:
            self.store.save_serialized(session_id, payload, self._lifetime.ttl_at(0), **row)
        self._id = session_id
        self.cookie.set(response, session_id)

    def _write(self, request: Request | None, payload: str, renew: bool) -> bool:
        """Write ``payload`` over the loaded row (with a new id if ``renew``),
        merging this request's changes into a concurrent write if there was
        one (:func:`~pyramid_pgstore.merge.write_merging`). False if the row is gone."""
        assert self._loaded is not None

        def write(base: SessionRecord, data: dict[str, Any], payload: str, version: str | None) -> bool:
            return self._write_once(request, base, data, payload, renew, version)

        def reload() -> SessionRecord | None:
            return self.store.load(self._id)  # type: ignore[arg-type]

        return write_merging(self.store, self._loaded, self, payload, write, reload)

    def _write_once(
        self,
        request: Request | None,
        base: SessionRecord,
        data: dict[str, Any],
        payload: str,
        renew: bool,
        version: str | None,
    ) -> bool:
        """One try of :meth:`_write`; on success the written row is the loaded one."""
        assert self._id is not None
        if (kept := self._without_foreign_csrf_token(data)) is not data:
            data, payload = kept, encode(self.store.serializer, kept)
        row: dict[str, Any] = {"userid": self._owner_of(data), "version": version, **self._client(request)}
        written: str | None = None  # a replace returns no version: a second write writes over
        if renew:
            new_id = new_session_id()
            written = self.store.renew(self._id, new_id, payload, self._lifetime.ttl_at(0), **row)
            if written is None:
                return False
            self._id = new_id
            # The new row starts its life now: a later write this request caps from here.
            base = dataclasses.replace(base, key=storage_key(new_id), created_on=base.loaded_at)
        else:
            ttl, keep_expiry = self._lifetime.ttl_at(base.age), not self._refresh
            row["cap"] = self._lifetime.cap
            if not self.store.replace_serialized(self._id, payload, ttl, keep_expiry=keep_expiry, **row):
                return False
        self._loaded = dataclasses.replace(base, payload=payload, version=written, data=dict(data))
        return True

    def _client(self, request: Request | None) -> dict[str, str | None]:
        return client_fields(request if self.options.track_client else None)

    def _lost(self, why: str) -> None:
        """The session this request held has gone: from now on it owns none."""
        key = (self.storage_key or "")[:12]
        log.debug("session %s… %s: its changes are dropped, its cookie left alone", key, why)
        self._id = None
        self._loaded = None
        self._superseded = True


def session_tween_factory(
    handler: Callable[[Request], Response], registry: Any
) -> Callable[[Request], Response]:
    """Finish the session once the response is known, inside the tween chain.

    Placed over Pyramid's exception view tween, it sees the final response
    whether the view returned or raised (``raise HTTPFound(...)`` after a
    login). If the final write fails (:class:`~pyramid_pgstore.StoreUnavailable`,
    :class:`~pyramid_pgstore.SessionTooLarge`), the app's exception view for
    it makes the response (a 503, say); with none, the error propagates.

    ``config.include('pyramid_pgstore')`` adds it; without it the session is
    finished by a response callback, outside the exception views.
    """

    def finish_session(request: Request) -> Response:
        response = handler(request)
        session = request.__dict__.get("session")  # only if the view used it
        if isinstance(session, PGStoreSession) and session._finishing and not session._finished:
            try:
                tm.finish(session, request, response, session.options.transaction)
            except Exception:
                return request.invoke_exception_view(sys.exc_info(), reraise=True)
        return response

    return finish_session
