"""A small demo app: every session feature on one plain HTML page.

``pserve development.ini`` serves it (``use = egg:pyramid_pgstore``). When
``pgstore.dsn`` is empty, the DSN comes from ``$PGSTORE_DSN``, which
``make demo`` sets to the local server it starts.
"""

from __future__ import annotations

import os
from html import escape

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import exception_view_config, view_config

from pyramid_pgstore import StoreUnavailable

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pyramid_pgstore demo</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}} form{{margin:.5em 0}}
.flash{{background:#ffd;padding:.3em}} code{{background:#eee}}</style></head>
<body>
<h1>pyramid_pgstore demo</h1>
{flashes}
<p>Visits in this session: <strong id="visits">{visits}</strong></p>
<p>Signed in as: <strong id="user">{user}</strong></p>
<p>Stored value: <strong id="value">{value}</strong></p>
<p>Session key in the table (a SHA-256 of the cookie's id, never the id):
<code id="key">{key}</code></p>
<form method="post" action="/set">{csrf}
<input name="value" placeholder="a value"> <button>Set value</button></form>
<form method="post" action="/clear">{csrf}<button>Clear value</button></form>
<form method="post" action="/flash">{csrf}
<input name="message" placeholder="a message"> <button>Flash it</button></form>
<form method="post" action="/login">{csrf}
<input name="user" placeholder="a name"> <button>Log in (new session id)</button></form>
<form method="post" action="/logout">{csrf}<button>Log out (session deleted)</button></form>
<p>Every form carries a CSRF token; a post without it is refused.</p>
</body></html>
"""


def _csrf_field(request: Request) -> str:
    token = escape(request.session.get_csrf_token())
    return f'<input type="hidden" name="csrf_token" value="{token}">'


@view_config(route_name="home", request_method="GET")
def home(request: Request) -> Response:
    session = request.session
    session["visits"] = session.get("visits", 0) + 1
    flashes = "".join(f'<p class="flash">{escape(str(m))}</p>' for m in session.pop_flash())
    body = PAGE.format(
        flashes=flashes,
        visits=session["visits"],
        user=escape(session.get("user", "nobody")),
        value=escape(session.get("value", "(none)")),
        key=escape((session.storage_key or "not stored yet")[:16]),
        csrf=_csrf_field(request),
    )
    return Response(body)


def _back(request: Request) -> HTTPSeeOther:
    return HTTPSeeOther(location=request.route_url("home"))


@view_config(route_name="set", request_method="POST")
def set_value(request: Request) -> HTTPSeeOther:
    request.session["value"] = request.POST.get("value", "")[:200]
    request.session.flash("Value set.")
    return _back(request)


@view_config(route_name="clear", request_method="POST")
def clear_value(request: Request) -> HTTPSeeOther:
    request.session.pop("value", None)
    request.session.flash("Value cleared.")
    return _back(request)


@view_config(route_name="flash", request_method="POST")
def flash(request: Request) -> HTTPSeeOther:
    request.session.flash(request.POST.get("message", "")[:200] or "(empty message)")
    return _back(request)


@view_config(route_name="login", request_method="POST")
def login(request: Request) -> HTTPSeeOther:
    user = request.POST.get("user", "").strip()[:50] or "guest"
    visits = request.session.get("visits", 0)
    # A privilege change gets a brand-new session id: the old one is dead.
    request.session.invalidate()
    request.session.update(user=user, visits=visits)
    request.session.flash(f"Welcome, {user}: your session id changed.")
    return _back(request)


@view_config(route_name="logout", request_method="POST")
def logout(request: Request) -> HTTPSeeOther:
    request.session.invalidate()
    return _back(request)


@exception_view_config(StoreUnavailable)
def store_unavailable(exc: StoreUnavailable, request: Request) -> Response:
    return Response("The session store is unavailable; try again shortly.", status=503)


def main(global_config: dict, **settings: str) -> object:
    """The WSGI app (``paste.app_factory``)."""
    if not settings.get("pgstore.dsn"):
        settings["pgstore.dsn"] = os.environ.get("PGSTORE_DSN", "")
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        config.set_default_csrf_options(require_csrf=True)
        for name, path in [
            ("home", "/"),
            ("set", "/set"),
            ("clear", "/clear"),
            ("flash", "/flash"),
            ("login", "/login"),
            ("logout", "/logout"),
        ]:
            config.add_route(name, path)
        config.scan(__name__)
    return config.make_wsgi_app()
