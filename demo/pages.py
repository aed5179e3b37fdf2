"""The demo's HTML: plain pages, every value escaped here.

The views (:mod:`demo.views`) hand these functions plain
values; nothing they pass is trusted to be HTML.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape

from pyramid_pgstore import SessionInfo

from .agents import browser_name

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:44em;margin:2em auto}} form{{margin:.5em 0}}
.flash{{background:#ffd;padding:.3em}} .error{{background:#fdd;padding:.3em}}
code{{background:#eee}} .note{{color:#555;font-size:90%}}
table{{border-collapse:collapse}} td,th{{padding:.2em .6em;text-align:left;border-bottom:1px solid #ddd}}
td form{{margin:0}}</style></head>
<body>
<p><a href="{home_url}">Demo</a> &middot; <a id="sessions-link" href="{sessions_url}">Your sessions</a></p>
{body}
</body></html>
"""

HOME = """<h1>pyramid_pgstore demo</h1>
{notices}
<p>Visits in this session: <strong id="visits">{visits}</strong></p>
<p>Signed in as: <strong id="user">{user}</strong></p>
<p>Stored value: <strong id="value">{value}</strong></p>
<p>Session key in the table (a SHA-256 of the cookie's id, never the id):
<code id="key">{key}</code></p>
<form id="set" method="post" action="/set">{csrf}
<input name="value" placeholder="a value" maxlength="{max_value}"> <button>Set value</button></form>
{big_form}
<form id="clear" method="post" action="/clear">{csrf}<button>Clear value</button></form>
<form id="flash" method="post" action="/flash">{csrf}
<input name="message" placeholder="a message"> <button>Flash it</button></form>
<form id="login" method="post" action="/login">{csrf}
<input name="user" placeholder="a name">
<label><input type="checkbox" name="keep" value="1"> Keep me signed in (30 days)</label>
<button>Log in (new session id, data kept)</button></form>
<p class="note">Logging in gives the session a new id but keeps its data: a value set
before is still here after (<code>pgstore.renew_on_login</code>). The view only calls
Pyramid's <code>remember()</code>, and <code>request.session.set_expiry()</code> when the
box is ticked: the session then lives 30 days without use, and its cookie outlives the
browser.</p>
<form id="logout" method="post" action="/logout">{csrf}<button>Log out (session deleted)</button></form>
<p class="note">Every form carries a CSRF token; a post without it is refused.</p>
"""

BIG_FORM = """<form id="big" method="post" action="/big">{csrf}
<button>Set a value over max_length ({max_length} bytes)</button></form>"""

SESSIONS = """<h1>Your sessions</h1>
{notices}
<p>Signed in as <strong id="user">{user}</strong> on {count}.</p>
<table id="sessions">
<tr><th>Browser</th><th>IP</th><th>Created</th><th>Last seen</th><th>Lifetime</th><th></th></tr>
{rows}
</table>
{sign_ins}
<form id="sign-out-others" method="post" action="/sessions/sign-out-others">{csrf}
<button>Sign out all other devices</button></form>
<p class="note">Each row is one session (a browser, a device). Signing one out ends it
at once: that browser is anonymous on its next request.</p>
"""

SESSION_ROW = """<tr class="{row_class}"><td class="browser" title="{user_agent}">{browser}</td>
<td class="ip">{ip}</td><td>{created}</td><td>{last_seen}</td><td class="lifetime">{lifetime}</td>
<td>{action}</td></tr>"""

SIGN_INS = """<h2>Sign-in notices</h2>
<ul id="sign-ins">
{items}
</ul>
<p class="note">Told by a <code>SessionOwnerChanged</code> subscriber each time this account
signs in (what an app would send by mail).</p>"""

SIGN_OUT_FORM = """<form class="sign-out" method="post" action="/sessions/sign-out">{csrf}
<input type="hidden" name="handle" value="{handle}"><button>Sign out</button></form>"""

ANONYMOUS_SESSIONS = """<h1>Your sessions</h1>
{notices}
<p id="anonymous">You are not logged in. <a href="{home_url}">Log in on the demo page</a>
to see the devices you are signed in on.</p>
"""

CSRF_FAILED = """<h1>That form could not be accepted</h1>
<p id="csrf-failed">It was sent without this session's security token. This happens
when the page was open for a long time (the session expired), when you logged out or
were signed out in another tab meanwhile, or when the form came from another site.</p>
<p>Nothing was changed. <a href="{home_url}">Back to the demo</a> to try again.</p>
"""

TOO_LARGE = """<h1>Your session is full</h1>
<p class="error" id="error">{message}</p>
<form id="clear" method="post" action="/clear">{csrf}<button>Clear value</button></form>
<p><a href="{home_url}">Back to the demo</a></p>
"""

STORE_UNAVAILABLE = """<h1>The session store is unavailable</h1>
<p>The database that holds the sessions did not answer. Try again shortly.</p>
"""


def layout(*, title: str, body: str, home_url: str, sessions_url: str) -> str:
    """A whole page around ``body`` (already HTML), with the demo's links."""
    return LAYOUT.format(
        title=escape(title), body=body, home_url=escape(home_url), sessions_url=escape(sessions_url)
    )


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf_token" value="{escape(token)}">'


def notices(flashes: Iterable[str], errors: Iterable[str] = ()) -> str:
    """Error and flash messages, as paragraphs."""
    html = [f'<p class="error" id="error">{escape(message)}</p>' for message in errors]
    html += [f'<p class="flash">{escape(str(message))}</p>' for message in flashes]
    return "\n".join(html)


def when(moment: datetime) -> str:
    """A database timestamp, in UTC, to the second."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def home(
    *,
    notices_html: str,
    visits: int,
    user: str,
    value: str,
    key: str,
    csrf: str,
    max_value: int,
    max_length: int,
) -> str:
    """The demo page's body."""
    big_form = BIG_FORM.format(csrf=csrf, max_length=max_length) if max_length else ""
    return HOME.format(
        notices=notices_html,
        visits=visits,
        user=escape(user),
        value=escape(value),
        key=escape(key),
        csrf=csrf,
        max_value=max_value,
        big_form=big_form,
    )


def lifetime(seconds: float | None, default: float | None) -> str:
    """A session's lifetime, for people: its own (set_expiry) or the default."""
    if not seconds:
        own = "" if seconds is None else ", browser session"
        return f"{duration(default)} without use{own}" if default else "no expiry"
    return f"{duration(seconds)} without use (kept signed in)"


def duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"


def session_row(info: SessionInfo, csrf: str, default_lifetime: float | None = None) -> str:
    """One device: its browser, address and times, and its sign-out button
    (the current one is marked instead)."""
    if info.current:
        action = '<strong class="this-device">this device</strong>'
    else:
        action = SIGN_OUT_FORM.format(csrf=csrf, handle=escape(info.handle))
    return SESSION_ROW.format(
        row_class="session current" if info.current else "session",
        user_agent=escape(info.user_agent or "not recorded"),
        browser=escape(browser_name(info.user_agent)),
        ip=escape(info.ip or "not recorded"),
        created=when(info.created_on),
        last_seen=when(info.last_seen),
        lifetime=escape(lifetime(info.lifetime, default_lifetime)),
        action=action,
    )


def sessions(
    *,
    notices_html: str,
    user: str,
    found: list[SessionInfo],
    csrf: str,
    default_lifetime: float | None = None,
    sign_ins: Iterable[str] = (),
) -> str:
    """The "Your sessions" page's body, for a logged-in user."""
    count = "1 device" if len(found) == 1 else f"{len(found)} devices"
    items = "\n".join(f'<li class="sign-in">{escape(notice)}</li>' for notice in sign_ins)
    return SESSIONS.format(
        notices=notices_html,
        user=escape(user),
        count=count,
        rows="\n".join(session_row(info, csrf, default_lifetime) for info in found),
        sign_ins=SIGN_INS.format(items=items) if items else "",
        csrf=csrf,
    )


def anonymous_sessions(*, notices_html: str, home_url: str) -> str:
    """The "Your sessions" page's body, for a visitor who is not logged in."""
    return ANONYMOUS_SESSIONS.format(notices=notices_html, home_url=escape(home_url))


def csrf_failed(*, home_url: str) -> str:
    """The body of the page for a form refused by the CSRF check."""
    return CSRF_FAILED.format(home_url=escape(home_url))


def too_large(*, message: str, csrf: str, home_url: str) -> str:
    """The body of the page for a session over max_length on a GET (which
    cannot redirect to the demo page: that would fail the same way)."""
    return TOO_LARGE.format(message=escape(message), csrf=csrf, home_url=escape(home_url))
