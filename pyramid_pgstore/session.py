"""The Pyramid session: ``request.session`` backed by a :class:`PGStore`.

One request's session, start to end (the states are named in
:mod:`pyramid_pgstore.lifecycle`):

1. Pyramid builds it on first access to ``request.session``. The cookie is
   read and, if it is validly signed, its session looked up: one SELECT.
   What was :class:`~pyramid_pgstore.lifecycle.Found` decides the
   :class:`~pyramid_pgstore.lifecycle.Stage` it starts in.
2. The view reads and changes it like a dict. Readers cost nothing; methods
   that change it (marked ``@_changes``) only mark it for the end of the
   request. Two calls write at once and say so: :meth:`~PGStoreSession.invalidate`
   ends the stored session, :meth:`~PGStoreSession.renew` gives it a new id.
3. At the end of the request (the session tween, pyramid_tm's commit, or a
   response callback) :meth:`~PGStoreSession.finish` sums up the
   :class:`~pyramid_pgstore.lifecycle.Situation`, asks
   :func:`~pyramid_pgstore.lifecycle.decide` for the
   :class:`~pyramid_pgstore.lifecycle.Plan` and carries it out in one place
   (:meth:`~PGStoreSession.carry_out`): at most one write, and the cookie
   kept, set or dropped.

Cost, per request: never touching ``request.session`` costs nothing; no
valid cookie, no database work until there is data to save; a valid cookie,
one SELECT; at the end, at most one write (one statement, unless another
request wrote the row meanwhile: then its changes are merged, one more read
and write per conflict).

A response changes the cookie only for a session its request owns at the
end: one it loaded, or one it created. A request whose session turns out to
be gone (another request logged out, logged in or revoked it meanwhile)
leaves the cookie alone, since the browser may already hold a newer one,
and drops its write (logged at debug level).
"""

from __future__ import annotations

import enum
import functools
import logging
import secrets
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from pyramid.interfaces import ISession
from pyramid.request import Request
from pyramid.response import Response
from zope.interface import implementer

from . import tm
from .cookie import CONFIGURED as _CONFIGURED
from .cookie import SessionCookie, new_session_id, vary_on_cookie
from .errors import PGStoreWarning, StoreUnavailable
from .events import SessionEnded, SessionOwnerChanged
from .lifecycle import HOLDING, Cookie, Ending, Found, Outcome, Owner, Plan, Situation, Stage, Write, decide
from .lifetime import Lifetime, cookie_max_age, expiry_seconds
from .merge import FLASH_PREFIX
from .options import SessionOptions
from .records import Draft, SessionRecord, client_fields, storage_key
from .serializer import SCALARS
from .store import PGStore

log = logging.getLogger("pyramid_pgstore")

F = TypeVar("F", bound=Callable[..., Any])

CSRF_KEY = "_csrft_"  # the key Pyramid's own sessions keep the token under

# In a request's environ while the session tween runs for it: the tween, not
# a response callback, finishes a session made meanwhile.
_IN_TWEEN = "pyramid_pgstore.in_tween"

# The plans that write the session's data (and may change its owner).
_DATA_WRITES = (Write.INSERT, Write.REPLACE, Write.RENEW)


class Progress(enum.Enum):
    """Whether the end of the request still has work for the session."""

    IDLE = "nothing to do at the end (nothing changed, nothing to refresh)"
    DUE = "to finish when the response is ready"
    HANDED = "to be finished by pyramid_tm's commit (or abandoned by its abort)"
    DONE = "finished"


def _changes(method: F) -> F:
    """Mark a dict method as one that changes the session (saved at the end)."""

    def changing(self: PGStoreSession, *args: Any, **kwargs: Any) -> Any:
        self.changed()
        return method(self, *args, **kwargs)

    changing.__name__ = method.__name__
    changing.__doc__ = method.__doc__
    return changing  # type: ignore[return-value]


@implementer(ISession)
class PGStoreSession(dict):
    """One request's session. Created by the factory, configured by it.

    Changes are saved when the response is finished. A change inside a nested
    value (``session['cart'].append(x)``) is saved too: the data is compared
    with what was loaded. Calling :meth:`changed` is still allowed.

    ``found`` and ``stage`` say where the session stands
    (:mod:`pyramid_pgstore.lifecycle`).
    """

    # Set by session_factory on the subclass it makes: the configuration,
    # captured once, so that a request only reads its cookie.
    store: PGStore
    cookie: SessionCookie
    options: SessionOptions
    lifetime: Lifetime

    # Where a request's session starts: nothing found, nothing held, nothing
    # to do at the end. Class attributes: each request sets only what its
    # cookie and its transaction change.
    new = True
    found = Found.NOTHING
    stage = Stage.NEW
    progress = Progress.IDLE
    _id: str | None = None  # the stored session this request holds (STORED, RENEWED)
    _record: SessionRecord | None = None  # its row as read, or as this request last wrote it
    _cookie_id: str | None = None  # the id the cookie named
    _read_owner: str | None = None  # the owner and CSRF token as first read
    _read_token: str | None = None
    _refresh_due = False  # the row as read: its expiry is due for a refresh
    _old_secret = False  # the cookie was signed by a retired secret
    _renew_asked = False  # renew() waits for pyramid_tm's commit (transaction = auto)
    _changed = False  # a method that changes the data ran (or changed() was called)
    _own_lifetime: float | None = None  # set_expiry(): seconds, 0 (browser cookie) or None
    # Under pyramid_tm (pgstore.transaction): "auto" defers every write to
    # the commit, "shared" runs it in the app's database transaction.
    _renew_at_commit = False  # renew() waits for the commit (auto)
    _transaction: PGStore | None = None  # the store on the app's transaction (shared)
    # What waits for that commit to be announced (events, the session limit); None: nothing waits.
    _after_commit: list[Callable[[], object]] | None = None
    # Doomed before the session was even read: not this request's own
    # transaction (a test's, shared by its requests), which never commits.
    _doomed_at_start = False

    def __init__(self, request: Request) -> None:
        self.request: Request | None = request
        self.created = time.time() + self.store.clock_offset
        mode = self.options.transaction
        if mode != "none" and tm.managed(request):
            if mode == "auto":
                self._renew_at_commit = True
                self._doomed_at_start = tm.doomed(request)
            else:  # shared
                self._transaction = tm.shared_store(self.store, request, self.options.dbsession)
                self._after_commit = []
        self._read(request)

    # -- the start: what the cookie leads to ----------------------------------

    def _read(self, request: Request) -> None:
        session_id, current_secret = self.cookie.read(request)
        if session_id is None:
            return
        self._cookie_id = session_id
        found = (self._transaction or self.store).lookup(session_id)
        record = found.record
        if record is not None and self.lifetime.ended(record):
            record = None  # past max_lifetime: dead, however active
        if record is None:
            self.found = Found.ENDED if found.ended else Found.UNREADABLE if found.unreadable else Found.DEAD
            return
        dict.update(self, record.data)
        self.found, self.stage = Found.LIVE, Stage.STORED
        self._id, self._record = session_id, record
        self._read_owner, self._read_token = self._owner_of(record.data), record.data.get(CSRF_KEY)
        self.new = False
        self.created = record.created_on.timestamp()
        self._own_lifetime = record.lifetime
        self._refresh_due = self._lifetime().due_for_refresh(record)
        self._old_secret = not current_secret
        self._finish_at_end()  # to see changes (nested ones too), refresh or re-sign

    @property
    def session_id(self) -> str | None:
        """The id of the stored session this request holds (what its cookie
        carries), or None. A credential: show or log :attr:`storage_key` instead."""
        return self._id

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

    # -- ISession: the dict -----------------------------------------------------

    def changed(self) -> None:
        """Mark the session as changed; it is saved when the response is finished."""
        self._changed = True
        self._finish_at_end()

    def _finish_at_end(self) -> None:
        """The end of the request has work: register for it, once. The
        session tween, while it runs for this request, finishes the session
        itself; a session made outside it is finished by a response callback."""
        if self.progress is Progress.IDLE and self.request is not None:
            self.progress = Progress.DUE
            if not self.request.environ.get(_IN_TWEEN):
                self.request.add_response_callback(self._finish_late)

    __setitem__ = _changes(dict.__setitem__)
    __delitem__ = _changes(dict.__delitem__)
    clear = _changes(dict.clear)
    pop = _changes(dict.pop)
    popitem = _changes(dict.popitem)
    setdefault = _changes(dict.setdefault)
    update = _changes(dict.update)
    __ior__ = _changes(dict.__ior__)

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        storage = self.setdefault(FLASH_PREFIX + queue, [])
        if allow_duplicate or msg not in storage:
            storage.append(msg)

    def pop_flash(self, queue: str = "") -> list[Any]:
        return self.pop(FLASH_PREFIX + queue, [])

    def peek_flash(self, queue: str = "") -> list[Any]:
        return self.get(FLASH_PREFIX + queue, [])

    def new_csrf_token(self) -> str:
        token = secrets.token_hex(20)
        self[CSRF_KEY] = token
        return token

    def get_csrf_token(self) -> str:
        token = self.get(CSRF_KEY)
        if token is None or self._csrf_token_stale(token):
            token = self.new_csrf_token()
        return token

    def _csrf_token_stale(self, token: str) -> bool:
        # Whoever planted a session before its login (fixation) knows its
        # CSRF token: a new user gets a new one, as Django's login() does.
        return self.owner != self._read_owner and token == self._read_token

    def _drop_stale_csrf_token(self) -> None:
        """Forget a stale token: the next get_csrf_token() makes a new one."""
        if CSRF_KEY in self and self._csrf_token_stale(self[CSRF_KEY]):
            dict.pop(self, CSRF_KEY)
            self._changed = True

    # -- a session's own lifetime ("keep me signed in") ------------------------

    def set_expiry(self, value: Any) -> None:
        """Give this session a lifetime of its own, as Django's ``set_expiry``:

        * seconds (more than 0, or a ``timedelta``): its idle timeout, and its
          cookie's Max-Age (a cookie that outlives the browser);
        * ``0``: the factory's idle timeout, with a browser-session cookie
          (no Max-Age);
        * ``None``: the factory's timeout and cookie again.

        Stored with the row (at the end of the request, one write), so it
        holds for later requests, writes, expiry refreshes and a new id at
        login, until the session ends; ``pgstore.max_lifetime`` still ends
        the session that long after its creation. No database work now.

        :raises TypeError: not a number of seconds (a bool, text), naming it.
        :raises ValueError: negative, not finite or over 10 years, naming it.
        """
        seconds = expiry_seconds(value)
        if seconds != self._own_lifetime:
            self._own_lifetime = seconds
            self._finish_at_end()

    def get_expiry_age(self) -> float | None:
        """Seconds of inactivity after which this session expires, as a write
        now would set it: its own lifetime (:meth:`set_expiry`) or the
        factory's, never past ``max_lifetime`` from its creation; None if it
        never expires."""
        age = self._record.age if self._record is not None and self._holds_session else 0.0
        return self._lifetime().ttl_at(age)

    def _lifetime(self) -> Lifetime:
        return self.lifetime.own(self._own_lifetime)

    def _cookie_max_age(self) -> Any:
        """The cookie's Max-Age for this session: its own lifetime's, none
        (``set_expiry(0)``), or the factory's (``_CONFIGURED``)."""
        own = self._own_lifetime
        if own is None:
            return _CONFIGURED
        return cookie_max_age(own) if own else None

    # -- ISession: the two calls that write at once ---------------------------

    def invalidate(self) -> None:
        """End the stored session now (one round trip) and empty this one.

        The response drops the cookie, unless data is written to the session
        later in the request: that data goes to a brand-new session id (with
        the factory's lifetime). Notifies :class:`~pyramid_pgstore.SessionEnded`.
        """
        if self._holds_session:
            # A logout stands whatever the request's transaction does, unless
            # this request renewed the row in that transaction (shared).
            plan = Plan(Write.END, Cookie.DROP, stands=self.stage is Stage.STORED)
            self.carry_out(plan, ended_by="invalidated")
        dict.clear(self)
        self.new = True
        self.created = time.time() + self.store.clock_offset
        self._own_lifetime = None
        self._finish_at_end()

    def renew(self) -> None:
        """Give the stored session a new id now, keeping its data (and this
        request's changes so far): one statement, after which the old id is
        dead. The response sends the new id. Under pyramid_tm with
        ``transaction = auto`` the new id is given at commit instead. A
        session not stored yet gets a fresh id anyway: nothing to do."""
        if not self._holds_session:
            return
        if self._renew_at_commit:
            self._renew_asked = True
        else:
            self._drop_stale_csrf_token()
            self.carry_out(Plan(Write.RENEW, Cookie.SET))
        self._finish_at_end()

    # -- the end of the request -----------------------------------------------

    @property
    def _holds_session(self) -> bool:
        return self.stage in HOLDING

    def _as_written(self) -> bool:
        """The data is as read or last written, as far as can be told without
        encoding it: nothing changed it through this session's methods, and
        no value can have changed inside (every one is one of
        :data:`~pyramid_pgstore.serializer.SCALARS`): the end of the request
        need not encode the session to compare it with the row."""
        return not self._changed and SCALARS.issuperset(map(type, self.values()))

    def situation(self, ending: Ending = Ending.RESPONSE, draft: Draft | None = None) -> Situation:
        """Where the session stands, for :func:`~pyramid_pgstore.lifecycle.decide`;
        ``draft``: the data as it would be written (:meth:`draft`), to tell
        whether it changed (None: it did not). No database work."""
        record, own = self._record, self._own_lifetime
        change = self._owner_change()
        changed = draft is not None and record is not None and draft.payload != record.payload
        return Situation(
            found=self.found,
            stage=self.stage,
            ending=ending,
            has_data=bool(self),
            changed=changed,
            lifetime_changed=record is not None and record.lifetime != self._own_lifetime,
            owner=change,
            renew_asked=self._renew_asked,
            renew_on_login=self.options.renew_on_login,
            refresh_due=self._refresh_due,
            old_secret=self._old_secret,
            persistent_cookie=bool(self._own_lifetime) or (own is None and self.cookie.max_age is not None),
        )

    def _owner_change(self) -> Owner:
        """What became of the session's user since the row was read or written."""
        owner = self.owner
        before = self._owner_of(self._record.data) if self._record is not None else None
        if owner == before or (not self._holds_session and owner is None):
            return Owner.SAME
        return Owner.SIGNED_IN if owner is not None else Owner.SIGNED_OUT

    def finish(self, request: Request) -> Outcome:
        """End the request's session: decide (:func:`~pyramid_pgstore.lifecycle.decide`)
        and carry out the plan; return what the response's cookie must do
        (:meth:`send` puts it on a response). Runs once; later calls do
        nothing. At most one write (see :meth:`carry_out`)."""
        raised = getattr(request, "exception", None) is not None and not self.options.set_on_exception
        return self._end(request, Ending.EXCEPTION if raised else Ending.RESPONSE)

    def abandon(self, request: Request) -> Outcome:
        """pyramid_tm aborted the request's transaction (``transaction =
        auto``): nothing it changed is saved and the cookie is left alone,
        except that a logout stands (``invalidate()`` ended the session
        already; ``forget()`` ends it now, with whatever else it held)."""
        self._after_commit = None  # what waited for the commit is void, but a logout stands
        return self._end(request, Ending.ABORTED)

    def _end(self, request: Request, ending: Ending) -> Outcome:
        if self.progress is Progress.DONE:
            return Outcome(Cookie.KEEP)
        self.progress = Progress.DONE
        self.request = request
        try:
            draft = None
            responding, holds = ending is Ending.RESPONSE, self._holds_session
            if responding:
                self._drop_stale_csrf_token()
                self._forget_lifetime_at_logout()
                if (self or holds) and not (holds and self._as_written()):
                    draft = self.draft()  # to compare with the row, or to write a new one
            vary = responding and holds  # made with stored data
            done = self.carry_out(decide(self.situation(ending, draft)), draft)
        finally:
            self.request = None  # the session outlives the request in some apps
        return Outcome(done.cookie, done.session_id, done.stands, vary)

    def _forget_lifetime_at_logout(self) -> None:
        """A logout that keeps other data (``forget()``) ends "keep me signed
        in": what is left, anonymous, goes back to the factory's lifetime and
        a browser-session cookie, unless this request set one itself."""
        record = self._record
        unchanged = record is not None and self._own_lifetime == record.lifetime
        if unchanged and self._owner_change() is Owner.SIGNED_OUT:
            self._own_lifetime = None

    def hand_over(self) -> None:
        """pyramid_tm's transaction will finish the session at its commit (or
        abandon it at its abort): the response callback leaves it alone, and
        what the write means (events, the session limit) waits for
        :meth:`announce`, after the commit."""
        if self.progress is Progress.DUE:
            self.progress = Progress.HANDED
            self._after_commit = []
            if self._doomed_at_start:
                warn_doomed(self.options.transaction)

    def announce(self) -> None:
        """The transaction committed: notify the events of what it stored and
        apply ``max_sessions_per_user`` (what :meth:`hand_over` or ``shared``
        mode held back). Later announcements are made at once."""
        waiting, self._after_commit = self._after_commit or [], None
        for action in waiting:
            action()

    def send(self, outcome: Outcome, response: Response) -> None:
        """Put ``outcome``'s cookie on ``response`` (and ``Vary: Cookie`` where due)."""
        if outcome.vary:
            vary_on_cookie(response)
        if outcome.cookie is Cookie.KEEP:
            return
        if outcome.cookie is Cookie.SET:
            self.cookie.set(response, outcome.session_id, self._cookie_max_age())  # type: ignore[arg-type]
        elif outcome.cookie is Cookie.DROP:
            self.cookie.delete(response)

    def carry_out(self, plan: Plan, draft: Draft | None = None, *, ended_by: str | None = None) -> Outcome:
        """Make ``plan``'s write (at most one statement, plus merges) and move
        the stage; return what the cookie must do. A write that finds its
        session gone leaves the cookie alone (the stage becomes LOST).

        Writes go to the app's transaction (``shared``) unless the plan
        stands; every other mode writes on the store's own connections.
        ``draft``: the data to write, if :meth:`draft` made it already;
        ``ended_by``: the reason an END reports (``SessionEnded``); without
        one, an END is a logout by ``forget()`` (``SessionOwnerChanged``).
        What the write means for the app, :class:`~pyramid_pgstore.SessionOwnerChanged`,
        :class:`~pyramid_pgstore.SessionEnded` and the session limit, follows
        once the write is stored (:meth:`announce`).

        :raises SessionTooLarge: before any write; the stored row is untouched.
        :raises StoreUnavailable: the database could not be reached.
        """
        write = plan.write
        if write is Write.NOTHING:
            return Outcome(plan.cookie, self._id, plan.stands)
        store = self.store if plan.stands or self._transaction is None else self._transaction
        previous = self._owner_of(self._record.data) if self._record is not None else None
        if write is Write.INSERT:
            session_id = new_session_id()
            takes_over = self._cookie_id if plan.takes_over else None
            lifetime = self._lifetime()
            ttl, cap = lifetime.ttl_at(0), lifetime.cap
            if not store.create(session_id, draft or self.draft(), ttl, replacing=takes_over, cap=cap):
                log.debug("not saving: another request already replaced this cookie's expired session")
                return Outcome(Cookie.KEEP)
            self._hold(session_id, None, Stage.STORED)
            previous = None  # a new session: a login if it has a user
        elif write is Write.REPLACE or write is Write.RENEW:
            renew = write is Write.RENEW
            if not self._write(store, draft or self.draft(), renew=renew, refresh=plan.refresh):
                return self._lost("was ended or revoked by another request")
        elif write is Write.TOUCH:
            assert self._id is not None and self._record is not None
            lifetime = self._lifetime()
            ttl, cap = lifetime.ttl_at(self._record.age), lifetime.cap
            if not store.touch(self._id, ttl, cap=cap, **self._client()):
                return self._lost("was ended or revoked by another request")
        elif write is Write.END:
            assert self._id is not None
            handle = self.storage_key
            store.end(self._id)
            self._hold(None, None, Stage.ENDED)
            if ended_by is not None:
                self._follow(plan, SessionEnded(self.request, handle or "", previous, ended_by))
            else:  # forget() left nothing: a logout
                self._follow(plan, SessionOwnerChanged(self.request, handle or "", None, previous))
        if write in _DATA_WRITES and self.owner != previous:
            self._follow(
                plan, SessionOwnerChanged(self.request, self.storage_key or "", self.owner, previous)
            )
            if self.owner is not None and self.options.max_sessions_per_user:
                self._follow(plan, self._limit(self.owner))
        return Outcome(plan.cookie, self._id, plan.stands)

    def _follow(self, plan: Plan, action: Any) -> None:
        """Run ``action`` (an event to notify, or a callable) once the write
        it follows is stored: now, or after the commit it waits for."""
        if callable(action):
            run = action
        else:
            registry = getattr(self.request, "registry", None)
            if registry is None:
                return
            run = functools.partial(registry.notify, action)
        if self._after_commit is None or plan.stands:
            run()
        else:
            self._after_commit.append(run)

    def _limit(self, userid: str) -> Callable[[], object]:
        """``max_sessions_per_user``: after a login is stored, the user's
        sessions beyond the limit end, least recently seen first (one
        statement, on the store's own connections, after any commit)."""
        request, most = self.request, self.options.max_sessions_per_user

        def limit() -> None:
            try:
                self.store.delete_sessions_beyond(userid, most, request=request)  # type: ignore[arg-type]
            except StoreUnavailable as exc:  # the login is stored: say so, do not fail it
                log.warning("could not apply max_sessions_per_user for a login: %s", exc)

        return limit

    def _write(self, store: PGStore, draft: Draft, renew: bool, refresh: bool) -> bool:
        """Write this session over the row it holds (with a new id if
        ``renew``), merging with a concurrent write; False if the row is gone."""
        record = self._record
        assert self._id is not None and record is not None
        new_id = new_session_id() if renew else None
        lifetime = self._lifetime()
        ttl = lifetime.ttl_at(0 if renew else record.age)
        keep_expiry = not (renew or refresh)
        written = store.write(
            self._id, draft, record, ttl, cap=lifetime.cap, keep_expiry=keep_expiry, new_id=new_id
        )
        if written is None:
            return False
        if written.data != self:  # others' changes came in with the merge
            dict.clear(self)
            dict.update(self, written.data)
        self._hold(new_id or self._id, written, Stage.RENEWED if renew else self.stage)
        self._renew_asked = False
        return True

    def draft(self) -> Draft:
        """The session as it would be written now (encoded; no database work)."""
        # After a change of user, the CSRF token is this request's to decide:
        # one another request on the pre-login id made is not merged in.
        claim = (CSRF_KEY,) if self.owner != self._read_owner else ()
        client = self._client()
        return self.store.draft(
            self, owner_key=self.options.userid_key, claim=claim, lifetime=self._own_lifetime, **client
        )

    def _client(self) -> dict[str, str | None]:
        return client_fields(self.request if self.options.track_client else None)

    def _hold(self, session_id: str | None, record: SessionRecord | None, stage: Stage) -> None:
        self._id, self._record, self.stage = session_id, record, stage

    def _lost(self, why: str) -> Outcome:
        """The session this request held has gone: from now on it holds none."""
        key = (self.storage_key or "")[:12]
        log.debug("session %s… %s: its changes are dropped, its cookie left alone", key, why)
        self._hold(None, None, Stage.LOST)
        return Outcome(Cookie.KEEP)

    def _finish_late(self, request: Request, response: Response) -> None:
        """:meth:`finish` as a response callback (no session tween: a factory
        set in code). pyramid_tm's transaction is over by then, so the write
        is made as with ``transaction = none``, on the store's own connections."""
        if self.progress is Progress.DUE:
            self._transaction = None
            self._after_commit = None
            self.send(self.finish(request), response)


def warn_doomed(mode: str) -> None:
    """A session handed to a transaction that is doomed already will not be saved: say why."""
    warnings.warn(
        PGStoreWarning(
            f"pyramid_pgstore: this request's session changes will not be saved: with "
            f"pgstore.transaction = {mode} they are written when pyramid_tm's transaction "
            "commits, and this request's transaction is doomed. A test that shares one doomed "
            "transaction between requests (tm.active and tm.manager in the WSGI environ, as "
            "pyramid-cookiecutter-starter's testapp fixture does) should set "
            "pgstore.transaction = none for its app."
        ),
        stacklevel=2,
    )


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
        environ = request.environ
        environ[_IN_TWEEN] = True  # a session made meanwhile is finished here
        try:
            response = handler(request)
        finally:
            del environ[_IN_TWEEN]
        session = request.__dict__.get("session")  # only if the view used it
        if isinstance(session, PGStoreSession) and session.progress is Progress.DUE:
            try:
                tm.finish(session, request, response, session.options.transaction)
            except Exception:
                return request.invoke_exception_view(sys.exc_info(), reraise=True)
        return response

    return finish_session
