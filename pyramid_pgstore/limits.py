"""The largest values the store's options and arguments may take.

Each is the largest value that still works everywhere it goes: a timestamp
ten years away is far from every limit (Python's datetime ends in 9999,
PostgreSQL's timestamps far later); PostgreSQL's statement_timeout is at most
2^31 - 1 ms (24.8 days), and so is libpq's tcp_user_timeout, which the pool
timeout sets.
"""

MAX_SECONDS = 10 * 365 * 86400  # timeouts, lifetimes, max_age, ttl, cleanup_interval: 10 years
MAX_STATEMENT_TIMEOUT = 86400  # one day
MAX_POOL_TIMEOUT = 3600  # one hour
MAX_POOL_SIZE = 10000
MAX_LENGTH = 1 << 30  # PostgreSQL's largest text value: 1 GiB
