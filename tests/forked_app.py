"""The SQLAlchemy setup of docs/sqlalchemy.rst ("With SQLAlchemy and pyramid_tm") as an app
for ``gunicorn --paste app.ini``: pyramid_tm, zope.sqlalchemy,
``request.dbsession`` on the engine ``engine_for`` makes, ``pgstore.engine =
sqlalchemy.`` (one pool), a session security policy, and views that log in
(a user row), write (the session and the user row) and read (both).

``app.query_at_start = true``: the app runs a query on its engine once
everything is included, as an app that checks its database at start-up does:
its connection then stays open in the engine's pool when gunicorn forks.
"""

import os

import zope.sqlalchemy
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.security import remember
from pyramid.settings import asbool
from sqlalchemy import Column, Integer, Text, text
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_pgstore.sqla import engine_for

Base = declarative_base()


class User(Base):
    __tablename__ = "forked_users"
    id = Column(Integer, primary_key=True)
    name = Column(Text, nullable=False)
    notes = Column(Integer, nullable=False, default=0)


class SecurityPolicy:
    """The policy of docs/sqlalchemy.rst: the user kept in the session."""

    def __init__(self):
        self.helper = SessionAuthenticationHelper()

    def identity(self, request):
        return self.helper.authenticated_userid(request)

    def authenticated_userid(self, request):
        return self.helper.authenticated_userid(request)

    def permits(self, request, context, permission):
        return self.identity(request) is not None

    def remember(self, request, userid, **kw):
        return self.helper.remember(request, userid, **kw)

    def forget(self, request, **kw):
        return self.helper.forget(request, **kw)


def models(config):
    """The cookiecutter's models/__init__.py includeme, with step 3 of docs/sqlalchemy.rst."""
    settings = config.get_settings()
    settings["tm.manager_hook"] = "pyramid_tm.explicit_manager"
    config.include("pyramid_tm")
    engine = engine_for(config.registry, "sqlalchemy.")
    factory = sessionmaker(bind=engine)

    def dbsession(request):
        session = factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, reify=True)


def login(request):
    user = User(name=request.params["name"])
    request.dbsession.add(user)
    request.dbsession.flush()
    remember(request, user.id)  # through the policy: the session's auth.userid
    request.session["n"] = 0
    return {"n": 0, "pid": os.getpid()}


def note(request):
    """One more note: counted in the session and in the user's row."""
    user = request.dbsession.get(User, request.authenticated_userid)
    user.notes += 1
    request.session["n"] = request.session["n"] + 1
    return {"n": request.session["n"], "notes": user.notes, "pid": os.getpid()}


def whoami(request):
    userid = request.authenticated_userid
    user = request.dbsession.get(User, userid) if userid is not None else None
    return {
        "n": request.session.get("n"),
        "notes": user.notes if user else None,
        "pid": os.getpid(),
        # The PostgreSQL process serving this worker's transaction.
        "backend": request.dbsession.execute(text("SELECT pg_backend_pid()")).scalar(),
    }


def main(global_config, **settings):
    with Configurator(settings=settings) as config:
        config.include(models)
        config.include("pyramid_pgstore")  # after the models: pgstore.engine finds their engine
        if asbool(settings.get("app.query_at_start")):
            with engine_for(config.registry).connect() as conn:  # back to the pool, open, when done
                conn.execute(text("SELECT count(*) FROM forked_users"))
        config.set_security_policy(SecurityPolicy())
        for view in (login, note, whoami):
            config.add_route(view.__name__, "/" + view.__name__)
            config.add_view(view, route_name=view.__name__, renderer="json")
    return config.make_wsgi_app()
