"""One request's session, as named states, and the one decision made from them.

A request's session is described by three things:

* :class:`Found`: what the request's cookie led to, fixed once it is read;
* :class:`Stage`: where the session this request holds is in its lifecycle,
  moved only by the session's own writes
  (:meth:`~pyramid_pgstore.session.PGStoreSession.invalidate`,
  :meth:`~pyramid_pgstore.session.PGStoreSession.renew`, the write at the
  end of the request);
* :class:`Situation`: those two and what the request did to the data, at the
  moment the request ends (:class:`Ending`).

:func:`decide` turns a situation into a :class:`Plan`: which write (at most
one), what the response does with the cookie, and whether both stand outside
the app's transaction. It is a pure function: the whole table of what a
request writes and what its cookie does can be read, and is tested, here.
:class:`~pyramid_pgstore.session.PGStoreSession` gathers the situation and
carries the plan out.

:class:`Situation`, :class:`Plan` and :class:`Outcome` are named tuples, not
frozen dataclasses: every request builds them, and a frozen dataclass's
constructor sets each field through ``object.__setattr__``, which for a
situation's twelve fields cost about 16k instructions more (bench/counts.py).
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Found(enum.Enum):
    """What the request's cookie led to."""

    NOTHING = "no cookie, or one not validly signed"
    LIVE = "a live session"
    DEAD = "a session that expired, passed max_lifetime or was deleted"
    ENDED = "a session another request ended a moment ago"  # the browser may hold its successor
    UNREADABLE = "a row that no longer deserializes"  # left alone, for someone to look at


class Stage(enum.Enum):
    """Where the session this request holds is in its lifecycle."""

    NEW = "holds no stored session (none yet, or none found)"
    STORED = "holds a stored session, as read or as this request last wrote it"
    RENEWED = "holds it under a new id this request wrote: the cookie must carry it"
    ENDED = "ended the session it held (invalidate(), a logout): the cookie must go"
    LOST = "found its session gone when writing (ended or revoked by another request)"


#: The stages in which a request holds a stored session.
HOLDING = (Stage.STORED, Stage.RENEWED)


class Ending(enum.Enum):
    """How the request ends, as far as its session is concerned."""

    RESPONSE = "a response to send (the view returned or raised, set_on_exception)"
    EXCEPTION = "the view raised and set_on_exception is false"
    ABORTED = "pyramid_tm aborted the transaction (transaction = auto)"


class Owner(enum.Enum):
    """What became of the session's user (its ``userid_key``) since it was last written."""

    SAME = "unchanged"
    SIGNED_IN = "a user now, another or none before (a login, a switch of user)"
    SIGNED_OUT = "no user now, one before (forget())"


class Write(enum.Enum):
    """The one write a plan makes."""

    NOTHING = "nothing"
    INSERT = "a new row under a new id"
    REPLACE = "the row's data, if the row is still live (merged with a concurrent write)"
    TOUCH = "the row's expiry only"
    RENEW = "the row's data under a new id, the old id ended"
    END = "the row ended (emptied, kept a minute for requests in flight)"


class Cookie(enum.Enum):
    """What the response does with the session cookie."""

    KEEP = "no Set-Cookie"
    SET = "the held session's signed id"
    DROP = "a deletion cookie"


class Situation(NamedTuple):
    """Everything :func:`decide` looks at.

    ``changed``: the data differs from the row as read (or last written);
    ``lifetime_changed``: ``set_expiry()`` gave the session another lifetime;
    ``refresh_due``: the expiry is ``reissue_time`` or more behind;
    ``old_secret``: the cookie was signed by a retired secret;
    ``persistent_cookie``: the cookie has a Max-Age, sent again with each write.
    """

    found: Found
    stage: Stage
    ending: Ending = Ending.RESPONSE
    has_data: bool = False
    changed: bool = False
    lifetime_changed: bool = False
    owner: Owner = Owner.SAME
    renew_asked: bool = False
    renew_on_login: bool = True
    refresh_due: bool = False
    old_secret: bool = False
    persistent_cookie: bool = False

    @property
    def holds_session(self) -> bool:
        return self.stage in HOLDING


class Plan(NamedTuple):
    """What the end of a request does.

    ``stands``: the write runs on the store's own connections, outside the
    app's transaction (``transaction = shared``), and the cookie change is
    sent whatever that transaction does: a logout stands. ``refresh``: a
    REPLACE also moves the expiry (else it leaves it, a cheaper write).
    ``takes_over``: an INSERT made for a cookie whose session is dead ends
    that row, once (two such requests never both set a cookie).
    """

    write: Write
    cookie: Cookie
    stands: bool = False
    refresh: bool = False
    takes_over: bool = False


NOTHING = Plan(Write.NOTHING, Cookie.KEEP)


def decide(situation: Situation) -> Plan:
    """The write and the cookie for a request ending in ``situation``.

    * A session that is only read writes nothing, unless its expiry is due
      for a refresh (TOUCH), and sets no cookie.
    * Changed data is written over the row (REPLACE); a new user (or none,
      after ``forget()``) gives it a new id (RENEW, with ``renew_on_login``).
      A new lifetime (``set_expiry()``) is written with a new expiry, and the
      cookie sent again with its new Max-Age.
    * Data in a request that holds no session starts one (INSERT), except
      where the cookie named a session another request ended a moment ago:
      the browser may hold that request's newer cookie, which a new one would
      replace; a login still starts one (it is the newest word on who the
      browser is).
    * A logout stands: ``forget()`` leaving nothing ends the row, and one
      keeping data renews it, on the store's own connections; a session this
      request ended has its cookie dropped whatever the transaction does.
    * The cookie is set when the id changed, a retired secret signed it, or
      it has a Max-Age to push forward with a write; it is dropped after an
      end; otherwise left alone.
    """
    s = situation
    if s.ending is not Ending.RESPONSE:
        if s.ending is Ending.EXCEPTION:  # only what already happened to the row
            if s.stage is Stage.RENEWED:
                return Plan(Write.NOTHING, Cookie.SET)
            return _cookie_only(s)
        # ABORTED: nothing the request changed is saved, but a logout
        if s.stage is Stage.STORED and s.owner is Owner.SIGNED_OUT:
            return Plan(Write.END, Cookie.DROP, stands=True)
        return _cookie_only(s)
    if not s.holds_session:
        if not s.has_data:
            return _cookie_only(s)
        superseded = s.stage is Stage.LOST or s.found is Found.ENDED
        if superseded and s.owner is not Owner.SIGNED_IN:
            return NOTHING
        return Plan(Write.INSERT, Cookie.SET, takes_over=s.found is Found.DEAD)
    new_owner = s.owner is not Owner.SAME
    renew = s.renew_asked or (s.renew_on_login and new_owner)
    logout = new_owner and s.owner is Owner.SIGNED_OUT
    # Outside the transaction, unless this request renewed the row in it already.
    stands_alone = logout and s.stage is Stage.STORED
    if renew and logout and not s.has_data:
        return Plan(Write.END, Cookie.DROP, stands=stands_alone)
    resend = s.stage is Stage.RENEWED or s.old_secret
    if renew:
        return Plan(Write.RENEW, Cookie.SET, stands=stands_alone)
    if s.lifetime_changed:  # a new expiry, and a cookie with the new Max-Age (or none)
        return Plan(Write.REPLACE, Cookie.SET, refresh=True)
    if s.changed:
        cookie = Cookie.SET if resend or s.persistent_cookie else Cookie.KEEP
        return Plan(Write.REPLACE, cookie, refresh=s.refresh_due)
    if s.refresh_due:
        return Plan(Write.TOUCH, Cookie.SET if resend or s.persistent_cookie else Cookie.KEEP)
    return Plan(Write.NOTHING, Cookie.SET) if resend else NOTHING


def _cookie_only(s: Situation) -> Plan:
    """No write; the cookie dropped, standing, after an end; else left alone."""
    if s.stage is Stage.ENDED:
        return Plan(Write.NOTHING, Cookie.DROP, stands=True)
    return NOTHING


class Outcome(NamedTuple):
    """What a carried-out plan leaves for the response: the cookie (``SET``:
    the signed ``session_id``), whether it stands whatever the app's
    transaction does, and whether the response was made from stored data
    (then it varies on the Cookie header)."""

    cookie: Cookie
    session_id: str | None = None
    stands: bool = False
    vary: bool = False
