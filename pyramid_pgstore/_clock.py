"""The store's notion of "now": the database clock, plus an offset for tests.

Every timestamp the store writes or compares is computed by PostgreSQL, so all
app servers agree on expiry whatever their own clocks say. ``offset`` exists
for ``pytest_pgstore``'s ``pgstore_clock`` fixture, which moves time forward
for every store in the process without sleeping. Nothing else sets it.
"""


class _Clock:
    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0.0  # seconds added to the database's now()


clock = _Clock()
