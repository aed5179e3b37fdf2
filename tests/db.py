"""A helper for tests that look at the database directly."""

from pytest_pgstore.localdb import query as sql  # sql(dsn, query, params=None): all rows, or []

__all__ = ["sql"]
