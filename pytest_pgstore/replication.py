"""The ``pgstore_replica_pair`` fixtures: a primary and a streaming replica
(:class:`pytest_pgstore.localpair.ReplicaPair`) started for a test and
stopped after it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .localpair import ReplicaPair


def pair_factory(bindir: str, run_as: str | None, tmp: pytest.TempPathFactory) -> Iterator[Callable]:
    """The ``pgstore_replica_pair_factory`` fixture: yields ``make(**options)``, which
    starts a :class:`ReplicaPair` (``options``: its keyword arguments) in a new
    ``tmp_path_factory`` directory; then stops every pair it made, even if one will
    not stop. Skips the test without ``pg_basebackup`` in ``bindir``."""
    if not os.access(os.path.join(bindir, "pg_basebackup"), os.X_OK):  # pg_rewind is optional
        pytest.skip(
            f"pytest_pgstore: a replica pair needs pg_basebackup, which is not in {bindir} "
            "(Debian/Ubuntu: apt-get install postgresql-client; or see --pgstore-pg-bindir)"
        )
    with contextlib.ExitStack() as stops:

        def make(**options: Any) -> ReplicaPair:
            pair = ReplicaPair(tmp.mktemp("replica-pair"), run_as=run_as or "", bindir=bindir, **options)
            stops.callback(pair.stop)
            pair.start()
            return pair

        yield make
