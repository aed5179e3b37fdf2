"""Server-side Pyramid sessions stored in PostgreSQL.

Enable with ``config.include('pyramid_pgstore')`` and ``pgstore.*`` settings,
or build a session factory in code with :func:`PGStoreSessionFactory`.
"""

from .cleanup import Cleaner, CleanupHandle, CleanupResult
from .config import IPGStore, get_store, includeme
from .errors import PGStoreError, PoolTimeout, SessionTooLarge, StoreUnavailable
from .options import CookieOptions, OptionError, SessionOptions, StoreOptions
from .serializer import JSONSerializer
from .session import PGStoreSessionFactory
from .store import PGStore, SessionRecord

__all__ = [
    "Cleaner",
    "CleanupHandle",
    "CleanupResult",
    "CookieOptions",
    "IPGStore",
    "JSONSerializer",
    "OptionError",
    "PGStore",
    "PGStoreError",
    "PGStoreSessionFactory",
    "PoolTimeout",
    "SessionOptions",
    "SessionRecord",
    "SessionTooLarge",
    "StoreOptions",
    "StoreUnavailable",
    "get_store",
    "includeme",
]
