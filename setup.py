import os

from setuptools import find_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
with open(os.path.join(here, "README.rst"), encoding="utf-8") as f:
    README = f.read()

requires = [
    "pyramid>=2.0",
    "webob>=1.8",
    # The binary wheel: installs with no compiler and no libpq headers (docs/quickstart.rst).
    "psycopg2-binary>=2.9",
]

# pgstore.engine, PGStore.from_engine, the Alembic table (pyramid_pgstore.sqla)
# and pgstore.transaction = shared (pyramid_pgstore.tm) with the app's stack.
sqlalchemy_extras = [
    "SQLAlchemy>=2.0",
    "zope.sqlalchemy>=3.0",
    "pyramid_tm>=2.5",
    "transaction>=4.0",
]

# What the pytest plugin (pytest_pgstore) and the README's example test use.
testing_extras = [
    "pytest>=8",
    "WebTest>=3",
    # The plugin's throwaway server: its executor, janitor and options (brings
    # psycopg 3, mirakuru and port-for). Its pytest plugin imports psycopg at
    # pytest's start: the binary wheel brings libpq, as psycopg2-binary does.
    "pytest-postgresql>=10",
    "psycopg[binary]>=3.1",
]

# The documentation (make docs: docs/, built with Sphinx, warnings as errors).
docs_extras = [
    "Sphinx>=8",
    # The theme: kept up with Sphinx's releases, and loads nothing from
    # elsewhere (docs/contributing.rst says why not pylons-sphinx-themes).
    "furo>=2024.8",
]

# This repository's own test suite, lint and documentation (make test, make
# docs: one .venv builds both).
dev_extras = [
    *testing_extras,
    *sqlalchemy_extras,
    *docs_extras,
    "pytest-xdist>=3",
    "waitress>=3",
    # tests/test_forked_workers.py: workers forked by a real gunicorn --preload
    # (bench/soak.py uses it too).
    "gunicorn>=22",
    # tests/test_sqlalchemy.py: apps whose engine is postgresql+psycopg (psycopg 3),
    # for pgstore.transaction = shared on their connection.
    "psycopg[binary]>=3.1",
    "ruff",
    "mypy",  # py.typed promises types: make lint checks them
]

setup(
    name="pyramid_pgstore",
    version="0.2.0.dev0",
    description="Server-side Pyramid sessions stored in PostgreSQL",
    long_description=README,
    long_description_content_type="text/x-rst",
    classifiers=[
        "Framework :: Pyramid",
        "Framework :: Pytest",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Database",
        "Topic :: Internet :: WWW/HTTP :: Session",
        "Typing :: Typed",
    ],
    keywords="pyramid session postgresql pytest",
    license="MIT",
    # The wheel holds the two packages, nothing else (no tests, no bench).
    packages=find_packages(
        include=["pyramid_pgstore", "pyramid_pgstore.*", "pytest_pgstore", "pytest_pgstore.*"]
    ),
    package_data={"pyramid_pgstore": ["py.typed"], "pytest_pgstore": ["py.typed"]},
    zip_safe=False,
    # Tested on 3.11, 3.12 and 3.13 (.ci/run).
    python_requires=">=3.11",
    install_requires=requires,
    extras_require={
        "testing": testing_extras,
        "sqlalchemy": sqlalchemy_extras,
        "docs": docs_extras,
        "dev": dev_extras,
    },
    entry_points={
        "pytest11": ["pgstore = pytest_pgstore.plugin"],
        "console_scripts": [
            "pgstore-cleanup = pyramid_pgstore.scripts.cleanup:main",
            "pgstore-schema = pyramid_pgstore.scripts.schema:main",
            "pgstore-sessions = pyramid_pgstore.scripts.sessions:main",
        ],
    },
)
