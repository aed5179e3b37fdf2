"""``config.include('pyramid_pgstore')``: settings in, session factory out."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.tweens import EXCVIEW
from zope.interface import Interface

from .factory import session_factory
from .settings import configuration_errors, parse_settings
from .store import PGStore


class IPGStore(Interface):
    """The registry utility holding the app's :class:`PGStore`."""


def includeme(config: Configurator) -> None:
    """Build the store from the ``pgstore.*`` settings, register it and its
    session factory, and start the in-app cleanup if configured.

    The store is reachable with :func:`get_store`. The table is created
    (unless ``pgstore.create_table = false``) before this returns.
    """
    settings = config.get_settings()
    parsed = parse_settings(settings)
    assert parsed.cookie is not None  # parse_settings required the secret
    with configuration_errors(settings):
        store = PGStore(parsed.dsn, options=parsed.store)
        factory = session_factory(store, parsed.cookie, parsed.session)
    config.registry.registerUtility(store, IPGStore)
    config.set_session_factory(factory)
    config.add_tween("pyramid_pgstore.session.session_tween_factory", over=EXCVIEW)


def get_store(registry_or_request: Registry | Request) -> PGStore:
    """The :class:`PGStore` that ``config.include('pyramid_pgstore')`` built."""
    registry = getattr(registry_or_request, "registry", registry_or_request)
    return registry.getUtility(IPGStore)
