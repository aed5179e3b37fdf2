"""``config.include('pyramid_pgstore')``: settings in, session factory out."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.tweens import EXCVIEW, INGRESS
from zope.interface import Interface

from .factory import session_factory
from .options import OptionError
from .settings import configuration_errors, parse_settings
from .store import PGStore


class IPGStore(Interface):
    """The registry utility holding the app's :class:`PGStore`."""


def includeme(config: Configurator) -> None:
    """Build the store from the ``pgstore.*`` settings, register it and its
    session factory, and start the in-app cleanup if configured.

    With ``pgstore.engine = sqlalchemy.`` the store takes its connections
    from the app's SQLAlchemy engine for those settings
    (:func:`pyramid_pgstore.sqla.engine_for`) instead of ``pgstore.dsn``;
    an engine of another driver than psycopg2 is refused
    (``ConfigurationError`` naming ``pgstore.engine``).

    The store is reachable with :func:`get_store`. The table is created
    (unless ``pgstore.create_table = false``) before this returns.
    """
    settings = config.get_settings()
    parsed = parse_settings(settings)
    assert parsed.cookie is not None  # parse_settings required the secret
    with configuration_errors(settings):
        if parsed.engine is not None:
            from .sqla import engine_for, unsupported  # SQLAlchemy is needed only here

            engine = engine_for(config.registry, parsed.engine)
            reason = unsupported(engine.url)
            if reason is not None:
                raise OptionError("engine", reason)
            store = PGStore.from_engine(engine, options=parsed.store)
        else:
            store = PGStore(parsed.dsn, options=parsed.store)  # type: ignore[arg-type]
        factory = session_factory(store, parsed.cookie, parsed.session)
    store.notify = config.registry.notify  # events of store methods called without a request
    config.registry.registerUtility(store, IPGStore)
    config.set_session_factory(factory)
    # Inside pyramid_tm's tween when there is one, so that the session is
    # finished while the request's transaction is still open.
    config.add_tween(
        "pyramid_pgstore.session.session_tween_factory",
        over=EXCVIEW,
        under=("pyramid_tm.tm_tween_factory", INGRESS),
    )


def get_store(registry_or_request: Registry | Request) -> PGStore:
    """The :class:`PGStore` that ``config.include('pyramid_pgstore')`` built."""
    registry = getattr(registry_or_request, "registry", registry_or_request)
    return registry.getUtility(IPGStore)
