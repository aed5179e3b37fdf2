"""Server-side Pyramid sessions stored in PostgreSQL.

Enable with ``config.include('pyramid_pgstore')`` and ``pgstore.*`` settings,
or build a session factory in code with :func:`PGStoreSessionFactory`.
"""

from .cleanup import Cleaner, CleanupHandle, CleanupResult
from .config import IPGStore, get_store, includeme
from .errors import (
    PGStoreError,
    PGStoreWarning,
    PoolTimeout,
    SchemaOutdated,
    SessionTooLarge,
    StoreUnavailable,
    UnsupportedStatement,
)
from .events import SessionEnded, SessionOwnerChanged
from .factory import PGStoreSessionFactory
from .options import CookieOptions, OptionError, SessionOptions, StoreOptions
from .records import SessionInfo, SessionRecord
from .serializer import JSONSerializer
from .store import PGStore
from .users import list_sessions, renew_session, revoke_other_sessions, revoke_session

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
    "PGStoreWarning",
    "PoolTimeout",
    "SchemaOutdated",
    "SessionEnded",
    "SessionInfo",
    "SessionOptions",
    "SessionOwnerChanged",
    "SessionRecord",
    "SessionTooLarge",
    "StoreOptions",
    "StoreUnavailable",
    "UnsupportedStatement",
    "get_store",
    "includeme",
    "list_sessions",
    "renew_session",
    "revoke_other_sessions",
    "revoke_session",
]
