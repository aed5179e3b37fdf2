"""``config.include('pyramid_pgstore')``: settings in, session factory out."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.tweens import EXCVIEW
from zope.interface import Interface

from .session import PGStoreSessionFactory
from .settings import PREFIX, parse_settings
from .store import PGStore


class IPGStore(Interface):
    """The registry utility holding the app's :class:`PGStore`."""


def includeme(config: Configurator) -> None:
    """Build the store from the ``pgstore.*`` settings, register it and its
    session factory, and start the in-app cleanup if configured.

    The store is reachable with :func:`get_store`. The table is created
    (unless ``pgstore.create_table = false``) before this returns.
    """
    options = parse_settings(config.get_settings())
    try:
        store = PGStore(
            options["dsn"],
            table=options["table"],
            pool_min=options["pool_min"],
            pool_max=options["pool_max"],
            pool_timeout=options["pool_timeout"],
            statement_timeout=options["statement_timeout"],
            synchronous_commit=options["synchronous_commit"],
            prepare_statements=options["prepare_statements"],
            create_table=options["create_table"],
            max_length=options["max_length"],
            serializer=options["serializer"],
        )
    except ValueError as exc:  # a DSN or table name the store cannot use
        name = "table" if "table name" in str(exc) else "dsn"
        raise ConfigurationError(f"{PREFIX}{name}: {exc}") from None
    factory = PGStoreSessionFactory(
        store,
        options["secret"],
        cookie_name=options["cookie_name"],
        max_age=options["max_age"],
        path=options["path"],
        domain=options["domain"],
        secure=options["secure"],
        httponly=options["httponly"],
        samesite=options["samesite"],
        timeout=options["timeout"],
        reissue_time=options["reissue_time"],
        set_on_exception=options["set_on_exception"],
    )
    config.registry.registerUtility(store, IPGStore)
    config.set_session_factory(factory)
    config.add_tween("pyramid_pgstore.session.session_tween_factory", over=EXCVIEW)
    if options["cleanup_interval"]:
        store.cleanup(options["cleanup_interval"])


def get_store(registry_or_request: Registry | Request) -> PGStore:
    """The :class:`PGStore` that ``config.include('pyramid_pgstore')`` built."""
    registry = getattr(registry_or_request, "registry", registry_or_request)
    return registry.getUtility(IPGStore)
