"""The demo's views: the demo page, its forms, "Your sessions", and the
friendly pages for a refused form, a session over ``max_length`` and an
unreachable store.

Logging in and out is Pyramid's own ``remember()`` / ``forget()`` (through
the :class:`~pyramid.authentication.SessionAuthenticationHelper` security
policy in :func:`demo.main`): the store does the rest.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from datetime import UTC, datetime

from pyramid.events import subscriber
from pyramid.exceptions import BadCSRFOrigin, BadCSRFToken
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import forget, remember
from pyramid.view import exception_view_config, view_config

from pyramid_pgstore import (
    SessionOwnerChanged,
    SessionTooLarge,
    StoreUnavailable,
    get_store,
    list_sessions,
    revoke_other_sessions,
    revoke_session,
)

from . import pages
from .agents import browser_name

# The "Set value" form takes this many characters, more than the default
# max_length (4096 bytes), so that the limit can be hit from the form too.
MAX_VALUE = 10_000
KEEP_SIGNED_IN = 30 * 86400  # seconds: the "Keep me signed in" box

# Each user's last sign-in notices, as an app would mail them: kept in this
# process only (a demo), ten at most per user.
SIGN_INS: defaultdict[str, deque[str]] = defaultdict(lambda: deque(maxlen=10))
_SIGN_INS_LOCK = threading.Lock()


@subscriber(SessionOwnerChanged)
def new_sign_in(event: SessionOwnerChanged) -> None:
    """A "new sign-in to your account" notice, told once the login is stored."""
    if event.userid is None:  # a logout
        return
    request = event.request
    agent = getattr(request, "user_agent", None)
    notice = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: a sign-in on {browser_name(agent)}"
        f" from {getattr(request, 'client_addr', None) or 'an unknown address'}"
    )
    with _SIGN_INS_LOCK:
        SIGN_INS[event.userid].appendleft(notice)


def _page(request: Request, title: str, body: str, status: int = 200) -> Response:
    """A whole HTML page; never touches the session."""
    html = pages.layout(
        title=title,
        body=body,
        home_url=request.route_url("home"),
        sessions_url=request.route_url("sessions"),
    )
    return Response(html, status=status)


def _csrf(request: Request) -> str:
    return pages.csrf_field(request.session.get_csrf_token())


def _back(request: Request, route: str = "home") -> HTTPSeeOther:
    return HTTPSeeOther(location=request.route_url(route))


def _too_large_message(size: int, max_length: int) -> str:
    return (
        f"Not saved: that would have made the session {size} bytes, over "
        f"pgstore.max_length ({max_length} bytes). Your session was kept as it was."
    )


def _too_large_from_query(request: Request) -> list[str]:
    """The message for the ``too_large`` query parameter that
    :func:`session_too_large` redirects with (a number; anything else is ignored)."""
    size = request.GET.get("too_large", "")
    if not size.isdigit():
        return []
    return [_too_large_message(int(size), get_store(request).max_length)]


@view_config(route_name="home", request_method="GET")
def home(request: Request) -> Response:
    """The demo page: counts the visit, shows the session and every form."""
    session = request.session
    session["visits"] = session.get("visits", 0) + 1
    body = pages.home(
        notices_html=pages.notices(session.pop_flash(), _too_large_from_query(request)),
        visits=session["visits"],
        user=request.authenticated_userid or "nobody",
        value=session.get("value", "(none)"),
        key=(session.storage_key or "not stored yet")[:16],
        csrf=_csrf(request),
        max_value=MAX_VALUE,
        max_length=get_store(request).max_length,
    )
    return _page(request, "pyramid_pgstore demo", body)


@view_config(route_name="set", request_method="POST")
def set_value(request: Request) -> HTTPSeeOther:
    """Store the value typed in the form (up to MAX_VALUE characters)."""
    request.session["value"] = request.POST.get("value", "")[:MAX_VALUE]
    request.session.flash("Value set.")
    return _back(request)


@view_config(route_name="big", request_method="POST")
def set_big_value(request: Request) -> HTTPSeeOther:
    """Store a value one byte over ``max_length``: the store refuses to save
    the session and :func:`session_too_large` says so."""
    request.session["value"] = "x" * (get_store(request).max_length + 1)
    request.session.flash("Value set.")  # never shown: the session is not saved
    return _back(request)


@view_config(route_name="clear", request_method="POST")
def clear_value(request: Request) -> HTTPSeeOther:
    """Remove the stored value."""
    request.session.pop("value", None)
    request.session.flash("Value cleared.")
    return _back(request)


@view_config(route_name="flash", request_method="POST")
def flash(request: Request) -> HTTPSeeOther:
    """Queue a flash message, shown once on the next page."""
    request.session.flash(request.POST.get("message", "")[:200] or "(empty message)")
    return _back(request)


@view_config(route_name="login", request_method="POST")
def login(request: Request) -> HTTPSeeOther:
    """Log in as the name given (no password: it is a demo). ``remember()``
    is all it takes: the store gives the session a new id (so a session id
    planted before login is worthless after it) and keeps its data."""
    user = request.POST.get("user", "").strip()[:50] or "guest"
    remember(request, user)
    keep = bool(request.POST.get("keep"))
    # 30 days on this device, or the default (a browser session, 20 minutes without use).
    request.session.set_expiry(KEEP_SIGNED_IN if keep else None)
    kept = " The value you stored before is still here." if "value" in request.session else ""
    how_long = " You stay signed in on this device for 30 days." if keep else ""
    request.session.flash(f"Welcome, {user}: your session has a new id and kept its data.{kept}{how_long}")
    return _back(request)


@view_config(route_name="logout", request_method="POST")
def logout(request: Request) -> HTTPSeeOther:
    """Log out: ``forget()`` the user and end the whole session, so that
    nothing of it is left on a shared computer. ``forget()`` alone would
    keep the rest of the data, under a new id. The notice goes in the new,
    empty session that replaces it."""
    forget(request)
    request.session.invalidate()
    request.session.flash("You are logged out. Your session was deleted; this is a new one.")
    return _back(request)


@view_config(route_name="sessions", request_method="GET")
def sessions(request: Request) -> Response:
    """Your sessions: each device the user is logged in on, newest activity
    first, with a sign-out button for each but this one."""
    notices_html = pages.notices(request.session.pop_flash())
    user = request.authenticated_userid
    if user is None:
        body = pages.anonymous_sessions(notices_html=notices_html, home_url=request.route_url("home"))
    else:
        found = list_sessions(request)
        with _SIGN_INS_LOCK:
            sign_ins = list(SIGN_INS.get(user, ()))
        body = pages.sessions(
            notices_html=notices_html,
            user=user,
            found=found,
            csrf=_csrf(request),
            default_lifetime=type(request.session).lifetime.ttl,
            sign_ins=sign_ins,
        )
    return _page(request, "Your sessions", body)


@view_config(route_name="sign_out_device", request_method="POST")
def sign_out_device(request: Request) -> HTTPSeeOther:
    """End one of the user's sessions, by the handle its row on the page
    carries (another user's handle is refused by revoke_session)."""
    handle = request.POST.get("handle", "")
    this_device = handle == request.session.storage_key
    if not revoke_session(request, handle):
        request.session.flash("Nothing signed out: that device was already signed out.")
    elif this_device:
        request.session.flash("You signed out this device.")
    else:
        request.session.flash("Signed out that device: it is anonymous from its next request on.")
    return _back(request, "sessions")


@view_config(route_name="sign_out_others", request_method="POST")
def sign_out_others(request: Request) -> HTTPSeeOther:
    """End every session of the user but this one."""
    count = revoke_other_sessions(request)
    request.session.flash(f"Signed out {count} other device{'' if count == 1 else 's'}.")
    return _back(request, "sessions")


@exception_view_config(SessionTooLarge)
def session_too_large(exc: SessionTooLarge, request: Request) -> Response:
    """The session would be over ``pgstore.max_length``: nothing was saved.

    The message cannot be a flash: the session is what is too large, and it
    is not saved after this. A form post is redirected to the demo page with
    the size in the query string, which the page turns into a message. A GET
    (the demo page itself, for a session just under the limit) cannot be
    sent there, it would fail again: it gets a page of its own, which offers
    to clear the value."""
    if request.method == "POST":
        return HTTPSeeOther(location=request.route_url("home", _query={"too_large": exc.size}))
    body = pages.too_large(
        message=_too_large_message(exc.size, exc.max_length),
        csrf=_csrf(request),
        home_url=request.route_url("home"),
    )
    return _page(request, "Your session is full", body, status=413)


@exception_view_config(BadCSRFToken)
@exception_view_config(BadCSRFOrigin)
def csrf_failed(exc: Exception, request: Request) -> Response:
    """A form without this session's CSRF token (or from another site): a
    400 that says what may have happened, with a way back."""
    return _page(request, "Form refused", pages.csrf_failed(home_url=request.route_url("home")), status=400)


@exception_view_config(StoreUnavailable)
def store_unavailable(exc: StoreUnavailable, request: Request) -> Response:
    """The database is down or overloaded: a 503, without touching the session."""
    return _page(request, "Session store unavailable", pages.STORE_UNAVAILABLE, status=503)
