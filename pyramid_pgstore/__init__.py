"""Server-side Pyramid sessions stored in PostgreSQL.

Enable with ``config.include('pyramid_pgstore')`` and ``pgstore.*`` settings,
or build a session factory in code with :func:`PGStoreSessionFactory`.
"""

from .cleanup import Cleaner, CleanupHandle, CleanupResult
from .config import IPGStore, get_store, includeme
from .errors import PGStoreError, PoolTimeout, SessionTooLarge, StoreUnavailable
from .session import PGStoreSessionFactory
from .store import JSONSerializer, PGStore, SessionRecord

__all__ = [
    "Cleaner",
    "CleanupHandle",
    "CleanupResult",
    "IPGStore",
    "JSONSerializer",
    "PGStore",
    "PGStoreError",
    "PGStoreSessionFactory",
    "PoolTimeout",
    "SessionRecord",
    "SessionTooLarge",
    "StoreUnavailable",
    "get_store",
    "includeme",
]
