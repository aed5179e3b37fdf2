"""A small demo app: every session feature on plain HTML pages.

A folder of the checkout, not part of the installed package: ``make demo``
(``demo/serve.py``) or ``pserve development.ini`` from the checkout serves it
(``use = call:demo:main``). When ``pgstore.dsn`` is empty, the DSN comes from
``$PGSTORE_DSN``, which ``make demo`` sets to the local server it starts.

The demo page (``/``) shows a visit counter, a stored value, flash messages
and logging in and out; "Your sessions" (``/sessions``) lists the devices of
the logged-in user and signs them out. The views are in
:mod:`~demo.views`, their HTML in
:mod:`~demo.pages`.
"""

from __future__ import annotations

import os

from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.security import Allowed, Denied

from . import views

ROUTES = [
    ("home", "/"),
    ("set", "/set"),
    ("big", "/big"),
    ("clear", "/clear"),
    ("flash", "/flash"),
    ("login", "/login"),
    ("logout", "/logout"),
    ("sessions", "/sessions"),
    ("sign_out_device", "/sessions/sign-out"),
    ("sign_out_others", "/sessions/sign-out-others"),
]


class SessionSecurityPolicy:
    """Pyramid's session authentication: ``remember()`` puts the user id in
    the session (under ``auth.userid``, the store's default ``userid_key``),
    ``forget()`` takes it out. The demo has no permissions to check."""

    def __init__(self) -> None:
        self.helper = SessionAuthenticationHelper()

    def identity(self, request: Request) -> str | None:
        return self.helper.authenticated_userid(request)

    def authenticated_userid(self, request: Request) -> str | None:
        return self.helper.authenticated_userid(request)

    def permits(self, request: Request, context: object, permission: str) -> Allowed | Denied:
        if self.identity(request) is None:
            return Denied("not logged in")
        return Allowed("logged in")

    def remember(self, request: Request, userid: str, **kw: object) -> list:
        return self.helper.remember(request, userid, **kw)

    def forget(self, request: Request, **kw: object) -> list:
        return self.helper.forget(request, **kw)


def main(global_config: dict, **settings: str) -> object:
    """The WSGI app (``use = call:demo:main`` in development.ini)."""
    if not settings.get("pgstore.dsn"):
        settings["pgstore.dsn"] = os.environ.get("PGSTORE_DSN", "")
    with Configurator(settings=settings) as config:
        config.include("pyramid_pgstore")
        config.set_security_policy(SessionSecurityPolicy())
        config.set_default_csrf_options(require_csrf=True)
        for name, path in ROUTES:
            config.add_route(name, path)
        config.scan(views)
    return config.make_wsgi_app()
