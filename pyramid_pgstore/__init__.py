"""Server-side Pyramid sessions stored in PostgreSQL.

Enable with ``config.include('pyramid_pgstore')`` and ``pgstore.*`` settings,
or build a session factory in code with :func:`PGStoreSessionFactory`.
"""

from .errors import PGStoreError, PoolTimeout, SessionTooLarge, StoreUnavailable
from .store import CleanupHandle, JSONSerializer, PGStore, SessionRecord

__all__ = [
    "CleanupHandle",
    "JSONSerializer",
    "PGStore",
    "PGStoreError",
    "PoolTimeout",
    "SessionRecord",
    "SessionTooLarge",
    "StoreUnavailable",
]
