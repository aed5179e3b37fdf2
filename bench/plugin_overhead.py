"""Per-test cost of pytest_pgstore's fixtures, against the alternatives.

Runs one throwaway pytest suite of N tests several ways, in one go, and
reports the time per test above a suite of plain tests:

* ``pgstore_dsn``: the database emptied before each test (what we do);
* ``pgstore_store``: the same plus a PGStore opened and closed per test;
* ``database per test``: pytest-postgresql's way, for comparison: its
  ``DatabaseJanitor`` creates a database from a template for each test and
  drops it after (``CREATE DATABASE ... TEMPLATE``, ``DROP DATABASE``).

Usage: .venv/bin/python bench/plugin_overhead.py [N]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITES = {
    "plain": "def test_{i}():\n    pass\n",
    "pgstore_dsn": "def test_{i}(pgstore_dsn):\n    pass\n",
    "pgstore_store": "def test_{i}(pgstore_store):\n    pgstore_store.load('x')\n",
    "database per test": ("def test_{i}(fresh_database):\n    pass\n"),
}

CONFTEST = """
import pytest, secrets
from pytest_postgresql.janitor import DatabaseJanitor

@pytest.fixture
def fresh_database(pgstore_proc):
    name = "per_test_" + secrets.token_hex(4)
    with DatabaseJanitor(
        user=pgstore_proc.user, host=pgstore_proc.host, port=pgstore_proc.port,
        password=pgstore_proc.password, dbname=name, template_dbname="template0",
    ):
        yield name
"""


def run_suite(body: str, count: int, workdir: Path) -> float:
    suite = workdir / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_many.py").write_text("\n".join(body.format(i=i) for i in range(count)))
    # The server start is paid once per run whatever the fixture: time it
    # apart with a single-test run and subtract it.
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the suite failed:\n{result.stdout[:6000]}{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        one = {name: run_suite(body, 1, workdir) for name, body in SUITES.items()}
        many = {name: run_suite(body, count + 1, workdir) for name, body in SUITES.items()}
    per_test = {name: (many[name] - one[name]) / count * 1000 for name in SUITES}
    plain = per_test["plain"]
    print(f"{count} tests per suite; milliseconds per test above a plain test:")
    for name in SUITES:
        if name != "plain":
            print(f"  {name:20s} {per_test[name] - plain:7.2f} ms")
    print(f"  (a plain test itself: {plain:.2f} ms)")


if __name__ == "__main__":
    main()
