"""The README says what the code does: its settings table and its examples run."""

import re
from pathlib import Path

import webtest

from pyramid_pgstore.settings import SETTINGS

README = (Path(__file__).parent.parent / "README.rst").read_text(encoding="utf-8")


def code_block_after(heading):
    """The first ``.. code-block:: python`` after ``heading``, dedented."""
    rest = README[README.index(heading) :]
    match = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", rest)
    return "\n".join(line[4:] for line in match.group(1).splitlines()) + "\n"


def test_the_settings_table_lists_exactly_the_settings_parsed():
    documented = re.findall(r"^   \* - ``pgstore\.(\w+)``", README, flags=re.MULTILINE)
    assert documented == [setting.name for setting in SETTINGS]


def test_the_code_only_example_serves_sessions(pgstore_dsn, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", pgstore_dsn)
    monkeypatch.setenv("SESSION_SECRET", "x" * 48)
    namespace = {}
    exec(compile(code_block_after("Without an ini file"), "README.rst", "exec"), namespace)  # noqa: S102
    app = webtest.TestApp(namespace["make_app"]())
    assert app.get("/").json == {"visits": 1}
    assert app.get("/").json == {"visits": 2}
    assert webtest.TestApp(app.app).get("/").json == {"visits": 1}


def test_the_testing_your_app_example_passes_in_a_downstream_suite(pytester):
    pytester.makepyfile(test_login=code_block_after("Testing your app"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
