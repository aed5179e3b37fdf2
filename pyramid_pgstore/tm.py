"""The session write and pyramid_tm's transaction: ``pgstore.transaction``.

``auto`` (the default)
    When pyramid_tm manages the request, the session is written only if the
    transaction commits, after the app's own resources (zope.sqlalchemy's
    commits the app's database transaction first): an aborted or doomed
    transaction saves nothing, and the response's cookie is not changed,
    except that a logout stands (``invalidate()`` ends the session at once;
    ``forget()`` ends it on abort).
    A failure of the session write then aborts the transaction and reaches
    the app's exception views, as pyramid_tm renders commit errors.
``shared``
    The session's statements run on the app's SQLAlchemy session
    (``request.dbsession``, or the attribute ``pgstore.dbsession`` names), in
    its database transaction: a user row and the login session commit or
    roll back together. The cookie is changed once the transaction commits.
    A logout runs on the store's own connections instead, and stands.
``none``
    The session is written when the response is ready, whatever the
    transaction does.

Requests pyramid_tm does not manage (``tm.activate_hook``, no pyramid_tm)
are written when the response is ready, in every mode, and so are all
requests of an app without the session tween (a factory set in code). Nothing here imports
pyramid_tm, transaction or zope.sqlalchemy unless ``shared`` is used.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pyramid.request import Request
from pyramid.response import Response

from .lifecycle import Cookie, Outcome
from .store import PGStore

log = logging.getLogger("pyramid_pgstore")

MODES = ("auto", "shared", "none")


class Finishable(Protocol):
    """What this module needs of a session (:class:`~pyramid_pgstore.session.PGStoreSession`)."""

    def finish(self, request: Request) -> Outcome: ...

    def abandon(self, request: Request) -> Outcome: ...

    def hand_over(self) -> None: ...

    def announce(self) -> None: ...

    def send(self, outcome: Outcome, response: Response) -> None: ...


def managed(request: Request) -> bool:
    """pyramid_tm manages this request's transaction right now."""
    return bool(request.environ.get("tm.active"))


def doomed(request: Request) -> bool:
    """The request's transaction is doomed: it will never commit."""
    try:
        return bool(request.tm.isDoomed())
    except Exception:  # no transaction begun (an explicit manager): nothing doomed either
        return False


def shared_store(store: PGStore, request: Request, attribute: str) -> PGStore:
    """``store`` on the connection of the request's SQLAlchemy session, in
    its transaction (``shared`` mode). zope.sqlalchemy is told the session
    wrote, so that it commits even when the app itself only read.

    :raises AttributeError: the request has no such attribute (say which).
    """
    import zope.sqlalchemy  # the shared mode's own dependency

    try:
        dbsession = getattr(request, attribute)
    except AttributeError:
        raise AttributeError(
            f"pgstore.transaction = shared needs the app's SQLAlchemy session as request.{attribute} "
            "(set pgstore.dbsession to the attribute's name)"
        ) from None
    conn = dbsession.connection().connection.driver_connection
    return store.in_transaction(conn, after=lambda: zope.sqlalchemy.mark_changed(dbsession))


def finish(session: Finishable, request: Request, response: Response, mode: str) -> None:
    """Finish ``session`` as ``mode`` says: now, at commit, or in the
    transaction with the cookie sent once it commits."""
    if mode == "none" or not managed(request):
        session.send(session.finish(request), response)
        return
    transaction = request.tm.get()
    if mode == "auto":
        session.hand_over()  # to the commit, if there is one; not to a response callback
        transaction.join(_SessionWrite(session, request, response, request.tm))
        # Events and the session limit once the commit succeeded (a hook's error
        # is logged by the transaction package, never turned into a failed commit).
        transaction.addAfterCommitHook(_announce_if_committed, args=(session,))
        return
    # shared: the statements run now, in the transaction; the cookie waits for
    # its commit, unless it stands whatever the transaction does (a logout).
    outcome = session.finish(request)
    if outcome.stands:
        session.send(outcome, response)
        return
    if outcome.vary:
        session.send(Outcome(Cookie.KEEP, vary=True), response)
    transaction.addAfterCommitHook(_after_commit, args=(session, outcome, response))


def _after_commit(committed: bool, session: Finishable, outcome: Outcome, response: Response) -> None:
    if committed:
        session.send(outcome, response)
        session.announce()


def _announce_if_committed(committed: bool, session: Finishable) -> None:
    if committed:
        session.announce()


class _SessionWrite:
    """A data manager (``transaction``'s protocol) that writes the session
    when the transaction commits, and does nothing when it aborts.

    It votes last (its sort key sorts after zope.sqlalchemy's ``~sqlalchemy:``),
    so the app's database has committed by then: a failed session write
    leaves the app's data committed and the session as it was.
    """

    def __init__(self, session: Finishable, request: Request, response: Response, manager: Any) -> None:
        self.session = session
        self.request = request
        self.response = response
        self.transaction_manager = manager
        self.voted = False  # the session was written (tpc_vote)

    def sortKey(self) -> str:
        return "~~pyramid_pgstore"

    def tpc_vote(self, transaction: Any) -> None:
        self.voted = True
        self.session.send(self.session.finish(self.request), self.response)

    def abort(self, transaction: Any) -> None:
        if self.voted:
            # Written at the vote: the transaction package calls abort() on every
            # resource when it cleans up after a commit, too. Nothing to undo.
            return
        # Nothing was written. Say so: a view that raised, even HTTPFound, or
        # a commit veto, aborts pyramid_tm's transaction, and with it the session.
        log.info("session changes not saved: the request's transaction was aborted")
        try:
            self.session.send(self.session.abandon(self.request), self.response)  # ... but a logout
        except Exception:  # the transaction package logs and goes on; say what failed
            log.exception("could not end the session of a logout whose transaction aborted")

    def tpc_begin(self, transaction: Any) -> None:
        pass

    def commit(self, transaction: Any) -> None:
        pass

    def tpc_finish(self, transaction: Any) -> None:
        pass

    def tpc_abort(self, transaction: Any) -> None:
        pass
