"""Stored sessions for a test app, without its login view (``pgstore_sessions``)."""

from __future__ import annotations

from typing import Any

from pyramid.interfaces import ISessionFactory

from pyramid_pgstore import PGStoreError, SessionRecord


class TestSessions:
    """Put a session in a WebTest app's cookie jar, and read what it holds.

    Every method takes ``app``: a ``webtest.TestApp`` (or anything with an
    ``app.registry``, ``set_cookie`` and ``cookies``) of an app whose session
    factory is pyramid_pgstore's.
    """

    __test__ = False  # not a test class, whatever its name says

    def start(self, app: Any, data: dict[str, Any]) -> str:
        """Store a new session holding ``data`` and give its cookie to
        ``app``; return the session id. One statement."""
        from pyramid_pgstore.cookie import new_session_id

        factory = self._factory(app)
        session_id = new_session_id()
        owner = data.get(factory.options.userid_key)
        ttl = factory.options.lifetime(factory.cookie.options)
        factory.store.save(session_id, data, ttl, userid=None if owner is None else str(owner))
        app.set_cookie(factory.cookie.name, factory.cookie.value(session_id))
        return session_id

    def login(self, app: Any, userid: Any, **data: Any) -> str:
        """:meth:`start` a session whose user is ``userid`` (under the app's
        ``pgstore.userid_key``, where Pyramid's ``remember()`` puts it)."""
        factory = self._factory(app)
        return self.start(app, {**data, factory.options.userid_key: userid})

    def data(self, app: Any) -> dict[str, Any] | None:
        """What the session named by ``app``'s cookie holds now, or None
        when there is no cookie or no live session behind it."""
        record = self.record(app)
        return None if record is None else record.data

    def record(self, app: Any) -> SessionRecord | None:
        """The stored session named by ``app``'s cookie (its times too), or None."""
        factory = self._factory(app)
        value = app.cookies.get(factory.cookie.name)
        session_id, _ = factory.cookie.verify(value.strip('"') if value else None)
        return None if session_id is None else factory.store.load(session_id)

    @staticmethod
    def _factory(app: Any) -> Any:
        registry = getattr(getattr(app, "app", app), "registry", None) or getattr(app, "registry", app)
        factory = registry.queryUtility(ISessionFactory)
        if factory is None or not hasattr(factory, "store"):
            raise PGStoreError("the app's session factory is not pyramid_pgstore's (config.include it)")
        return factory
