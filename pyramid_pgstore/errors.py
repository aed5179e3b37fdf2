"""The exceptions the store raises; all are exported from ``pyramid_pgstore``."""


class PGStoreError(Exception):
    """Base class of every error raised by :class:`pyramid_pgstore.PGStore`."""


class PGStoreWarning(UserWarning):
    """Something the app asked of its sessions will not happen as it expects
    (a session write that a doomed transaction will never commit, say)."""


class StoreUnavailable(PGStoreError):
    """The database could not be reached, or the connection was lost twice.

    Raised instead of a hang or a raw driver error, so that an app can map it
    to ``503 Service Unavailable``. The session data is untouched.
    """


class UnsupportedStatement(StoreUnavailable):
    """The database refused one of the store's statements as a feature it
    does not support (SQLSTATE 0A000): on Citus, a table that was
    distributed after the store started (it then uses statements Citus
    refuses). Restart the app, or set ``pgstore.distributed = true``. The
    session data is untouched.
    """


class PoolTimeout(StoreUnavailable):
    """No pooled connection became free within ``pool_timeout`` seconds."""


class SessionTooLarge(PGStoreError, ValueError):
    """The serialized session is longer than ``max_length`` bytes.

    Raised before anything is written: the stored copy is left as it was.
    """

    def __init__(self, size: int, max_length: int) -> None:
        super().__init__(
            f"session data is {size} bytes serialized, over max_length={max_length}; "
            "the stored session was left unchanged"
        )
        self.size = size
        self.max_length = max_length


class SchemaOutdated(PGStoreError):
    """The sessions table is missing, or has the layout of an older release.

    ``config.include`` creates or upgrades it in place unless
    ``pgstore.create_table = false``; then run ``pgstore-schema <your.ini>
    --apply`` (or put the SQL it prints into a migration) first.
    """

    def __init__(self, table: str, problem: str) -> None:
        super().__init__(
            f"{problem}: run 'pgstore-schema <your .ini file> --apply', or put the SQL that "
            "'pgstore-schema <your .ini file>' prints into a migration, or set "
            "pgstore.create_table = true to have it done at start"
        )
        self.table = table
