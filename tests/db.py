"""A helper for tests that look at the database directly."""

from pytest_pgstore.localdb import query as sql  # sql(dsn, query, params=None): all rows, or []

__all__ = ["sql"]


def rewrite(store, session_id, data, ttl, read=None):
    """Write ``data`` over a session as a request that read it would (``read``:
    the record it read; by default read now); whether it was written."""
    read = read or store.load(session_id)
    return store.write(session_id, store.draft(data), read, ttl) is not None


def add_dbsession(config, engine):
    """``request.dbsession`` as pyramid-cookiecutter-starter makes it: an
    SQLAlchemy session on ``engine`` joined to pyramid_tm's transaction."""
    import zope.sqlalchemy
    from sqlalchemy.orm import sessionmaker

    factory = sessionmaker(bind=engine)

    def dbsession(request):
        session = factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, reify=True)
