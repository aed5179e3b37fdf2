"""pytest plugin: a throwaway PostgreSQL and pyramid_pgstore fixtures.

Loaded automatically once ``pyramid_pgstore`` is installed. Importing it
imports nothing but pytest: nothing runs until a test asks for one of the
``pgstore_*`` fixtures. Every name here is prefixed, so an app's own
pytest-postgresql fixtures are left alone.

The server is pytest-postgresql's: its executor and janitor
(``pytest_pgstore.server``, ``pytest_pgstore.janitor``) and its
``--postgresql-*`` options and ``postgresql_*`` ini keys (``exec``, ``host``,
``port``, ``user``, ``password``, ``options``, ``startparams``,
``unixsocketdir``, ``postgres_options``). On top: running as root, one server
shared by the xdist workers of a run, nothing started until a fixture asks,
and tables emptied between tests instead of a database per test.

Fixtures: ``pgstore_dsn``, ``pgstore_url``, ``pgstore_store``,
``pgstore_settings``, ``pgstore_sessions``, ``pgstore_clock``,
``pgstore_pgbouncer_settings``, ``pgstore_pgbouncer_store`` (per test);
``pgstore_replica_pair``, ``pgstore_replica_pair_factory``, ``pgstore_patroni_cluster``,
``pgstore_patroni_cluster_factory`` (per test, servers of their own);
``pgstore_server``, ``pgstore_proc`` and ``pgstore_pgbouncer_dsn`` (per
session, or per worker under pytest-xdist, whose workers share one server).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pyramid_pgstore import PGStore

    from .server import GivenServer, ThrowawayServer
    from .sessions import TestSessions

# -- options ---------------------------------------------------------------------------

_OPTIONS = {
    "dsn": "DSN of an existing PostgreSQL server to use instead of starting one "
    "(the user must be allowed to CREATE DATABASE)",
    "pg_bindir": "directory holding PostgreSQL's server programs (pg_ctl, initdb, postgres): "
    "an alias of --postgresql-exec=DIR/pg_ctl, which it overrides; when neither names one, "
    "found with pg_config, PATH or /usr/lib/postgresql/*/bin",
    "run_as": "when tests run as root: the unprivileged user that runs the server "
    "and pgbouncer (default: postgres if that user exists, else nobody)",
    "pgbouncer": "path of the pgbouncer program for the pgstore_pgbouncer_* fixtures "
    "(default: PATH, then /usr/sbin/pgbouncer; tests that use them are skipped when it is missing)",
    "empty": "what pgstore_dsn empties before each test: 'all' the tables of the test database "
    "(the default), or only 'sessions' tables (made by pyramid_pgstore), keeping your app's rows",
}
_SERVER_DIR = pytest.StashKey[Path]()


_CITUS_HELP = (
    "--pgstore-dsn is a Citus coordinator with its workers added: each test database becomes a "
    "Citus database, and the table of every store built on it is distributed by key"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgstore", "pyramid_pgstore test database")
    for name, help_text in _OPTIONS.items():
        group.addoption(f"--pgstore-{name.replace('_', '-')}", dest=f"pgstore_{name}", help=help_text)
        parser.addini(f"pgstore_{name}", help_text, default="")
    group.addoption("--pgstore-citus", dest="pgstore_citus", action="store_true", help=_CITUS_HELP)
    parser.addini("pgstore_citus", _CITUS_HELP, type="bool", default=False)


def _option(config: pytest.Config, name: str) -> str:
    """One option, from the command line first, else the ini file."""
    return config.getoption(f"pgstore_{name}") or config.getini(f"pgstore_{name}") or ""


def _server_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The throwaway server's executor arguments, from pytest-postgresql's options."""
    from port_for import get_port
    from pytest_postgresql.config import get_config

    config = get_config(request)
    # pytest-postgresql's ini default for the socket directory is the
    # temporary directory; unless changed, the server's own directory is used
    # (under root the server's user may not be able to write elsewhere).
    socketdir = config.unixsocketdir if config.unixsocketdir != tempfile.gettempdir() else ""
    return {
        "pg_ctl": _pg_ctl(request.config),
        "host": config.host,
        "port": get_port(config.port),
        "user": config.user,
        "password": config.password or None,
        "options": config.options,
        "unixsocketdir": socketdir,
        "startparams": config.startparams,
        "postgres_options": config.postgres_options,
    }


# -- the run's server: one for the run, shared by pytest-xdist's workers ---------------


def _server_dir(config: pytest.Config) -> Path:
    """Where this run's server lives: a directory the controller made and
    gave its xdist workers, or one of this process's own."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "pgstore_server_dir" in workerinput:
        return Path(workerinput["pgstore_server_dir"])
    if _SERVER_DIR not in config.stash:
        config.stash[_SERVER_DIR] = Path(tempfile.mkdtemp(prefix="pytest-pgstore-"))
    return config.stash[_SERVER_DIR]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(pytest-xdist, in the controller) Every worker of the run shares one server."""
    node.workerinput["pgstore_server_dir"] = str(_server_dir(node.config))


def pytest_unconfigure(config: pytest.Config) -> None:
    """The process that made the server's directory stops the server: the
    controller under xdist, after its workers; the one process otherwise."""
    directory = config.stash.get(_SERVER_DIR, None)
    if directory is not None and not hasattr(config, "workerinput"):
        from .server import stop_server

        stop_server(directory)


@pytest.fixture(scope="session")
def pgstore_proc(request: pytest.FixtureRequest) -> ThrowawayServer | GivenServer:
    """The run's PostgreSQL server. Without ``--pgstore-dsn``, the throwaway
    one (pytest-postgresql's ``PostgreSQLExecutor``), started on first use (as
    an unprivileged user under root) and stopped at the end of the run;
    shared by pytest-xdist's workers. It has ``host``, ``port``, ``user``,
    ``password``, ``datadir``, ``logfile``, ``unixsocketdir`` and
    ``admin_dsn``. With ``--pgstore-dsn``, nothing is started: the given
    server as pytest-postgresql's ``NoopExecutor`` (``host``, ``port``,
    ``user``, ``password``, ``version``) with ``admin_dsn``, the DSN given."""
    from .server import GivenServer, shared_server

    given = _option(request.config, "dsn")
    if given:
        return GivenServer(given)
    try:
        return shared_server(
            _server_dir(request.config), lambda: _server_settings(request), _run_as(request.config)
        )
    except RuntimeError as exc:
        pytest.fail(f"pytest_pgstore: {exc}", pytrace=False)


@dataclass(frozen=True)
class Server:
    """The PostgreSQL server the fixtures use, and the database of this run."""

    admin_dsn: str  # a maintenance database on the server, for CREATE/DROP DATABASE
    dsn: str  # this test session's (or xdist worker's) own database

    @property
    def url(self) -> str:
        """``dsn`` as an SQLAlchemy URL (``postgresql+psycopg2://...``), for a
        session-scoped engine; its tables are emptied by ``pgstore_dsn``."""
        from pyramid_pgstore.dsn import as_url

        return as_url(self.dsn)


@pytest.fixture(scope="session")
def pgstore_server(
    request: pytest.FixtureRequest, pgstore_proc: ThrowawayServer | GivenServer
) -> Iterator[Server]:
    """A PostgreSQL server and a database of its own for this test session.

    The throwaway server (``pgstore_proc``) unless ``--pgstore-dsn`` names
    one. Under pytest-xdist every worker has a database of its own on it,
    created and dropped by pytest-postgresql's janitor. With
    ``--pgstore-citus``, a Citus database (see :mod:`pytest_pgstore.citus`).
    """
    from psycopg2.extensions import make_dsn

    dbname = f"pgstore_test_{secrets.token_hex(4)}"
    if request.config.getoption("pgstore_citus") or request.config.getini("pgstore_citus"):
        yield from _citus_server(request.config, pgstore_proc.admin_dsn, dbname)
        return
    from .janitor import RunDatabase

    database = RunDatabase(pgstore_proc.admin_dsn, dbname)
    database.init()
    yield Server(
        admin_dsn=pgstore_proc.admin_dsn, dsn=make_dsn(pgstore_proc.admin_dsn, dbname=database.dbname)
    )
    database.drop()


def _citus_server(config: pytest.Config, admin_dsn: str, dbname: str) -> Iterator[Server]:
    from psycopg2.extensions import make_dsn

    from pyramid_pgstore import testing

    from . import citus

    if not _option(config, "dsn"):
        pytest.fail("pytest_pgstore: --pgstore-citus needs --pgstore-dsn (the coordinator)", pytrace=False)
    try:
        citus.create_database(admin_dsn, dbname)
    except Exception as exc:
        pytest.fail(f"pytest_pgstore: {exc}", pytrace=False)
    testing.table_hooks.append(citus.distribute)
    try:
        yield Server(admin_dsn=admin_dsn, dsn=make_dsn(admin_dsn, dbname=dbname))
    finally:
        testing.table_hooks.remove(citus.distribute)
        citus.drop_database(admin_dsn, dbname)


# -- per test: an emptied database, and stores on it -----------------------------------


@pytest.fixture(scope="session")
def _pgstore_emptying(request: pytest.FixtureRequest) -> str:
    what = _option(request.config, "empty") or "all"
    if what not in ("all", "sessions"):
        pytest.fail(
            f"pytest_pgstore: --pgstore-empty must be 'all' or 'sessions', not {what!r}", pytrace=False
        )
    return what


@pytest.fixture(scope="session")
def _pgstore_janitor(pgstore_server: Server) -> Iterator[Any]:
    import psycopg2

    conn = psycopg2.connect(pgstore_server.dsn, application_name="pytest_pgstore")
    conn.autocommit = True
    with conn.cursor() as cur:
        # A test that leaves a transaction open must not hang the next one.
        cur.execute("SET lock_timeout = '10s'")
    yield conn
    conn.close()


@pytest.fixture
def _pgstore_emptied(pgstore_server: Server, _pgstore_janitor: Any, _pgstore_emptying: str) -> str:
    """This run's database, emptied (``--pgstore-empty``) for the test."""
    from .janitor import empty

    problem = empty(_pgstore_janitor, _pgstore_emptying)
    if problem:
        pytest.fail(f"pytest_pgstore: {problem}", pytrace=False)
    return pgstore_server.dsn


@pytest.fixture(autouse=True)
def _pgstore_isolation(request: pytest.FixtureRequest) -> None:
    """Every test that reaches this run's database only through a
    session-scoped fixture (``pgstore_server``, in an app's settings built
    once per run) starts with it emptied too, as one asking for
    ``pgstore_dsn`` does: no session rows carry over from one test to the
    next. Costs nothing in a test that uses no ``pgstore_`` fixture."""
    if "pgstore_server" in request.fixturenames:
        request.getfixturevalue("_pgstore_emptied")


@pytest.fixture
def pgstore_dsn(_pgstore_emptied: str, pgstore_server: Server) -> Iterator[str]:
    """DSN of a database whose tables are all empty when the test starts
    (with ``--pgstore-empty=sessions``: only pyramid_pgstore's tables).

    Tables persist between tests (so a store's CREATE TABLE is paid once);
    their rows do not: every table of the database is emptied, your app's
    too, unless ``--pgstore-empty=sessions``. Stores built on it during the
    test (an app made from ``pgstore_settings``, say), or on
    ``pgstore_pgbouncer_dsn``, are closed after it, so no test leaks
    connections into the next. (A test that uses the database only through
    ``pgstore_server`` gets it emptied too, and its stores are left open.)
    """
    from pyramid_pgstore import testing

    yield _pgstore_emptied
    testing.close_stores({pgstore_server.dsn, *_BOUNCER_DSNS})


@pytest.fixture
def pgstore_url(pgstore_dsn: str, pgstore_server: Server) -> str:
    """``pgstore_dsn`` (the same emptied database) as an SQLAlchemy URL,
    ``postgresql+psycopg2://user@host:port/dbname``, for ``create_engine`` or
    ``sqlalchemy.url``."""
    return pgstore_server.url


# The DSN of pgstore_pgbouncer_dsn, once started in this process.
_BOUNCER_DSNS: set[str] = set()


@pytest.fixture
def pgstore_store(pgstore_dsn: str) -> Iterator[PGStore]:
    """A :class:`pyramid_pgstore.PGStore` on ``pgstore_dsn``, closed after the test."""
    from pyramid_pgstore import PGStore

    store = PGStore(pgstore_dsn)
    yield store
    store.close()


@pytest.fixture
def pgstore_settings(pgstore_dsn: str) -> dict[str, str]:
    """``pgstore.*`` settings for ``config.include('pyramid_pgstore')``:
    the test database and a random secret. Merge them into your app's settings."""
    return {"pgstore.dsn": pgstore_dsn, "pgstore.secret": secrets.token_urlsafe(48)}


def _pg_ctl(config: pytest.Config) -> str:
    """PostgreSQL's pg_ctl: in ``--pgstore-pg-bindir`` if given, else
    ``--postgresql-exec`` (``postgresql_exec``) if that program is there,
    else found (:func:`~pytest_pgstore.localdb.find_pg_ctl`); fails the test without it."""
    from .localdb import find_pg_ctl

    bindir = _option(config, "pg_bindir")
    executable = config.getoption("postgresql_exec") or config.getini("postgresql_exec")
    if not bindir and executable and os.access(executable, os.X_OK):
        return str(executable)
    try:
        return find_pg_ctl(bindir)
    except FileNotFoundError as exc:
        pytest.fail(f"pytest_pgstore: {exc}", pytrace=False)


def _run_as(config: pytest.Config) -> str | None:
    """Under root, the user that runs the server and pgbouncer; else None."""
    from .localdb import run_as_user

    return run_as_user(_option(config, "run_as"))


# -- PgBouncer in front of the run's server --------------------------------------------


@pytest.fixture(scope="session")
def pgstore_pgbouncer_dsn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """DSN of this session's database (``pgstore_server.dsn``) through PgBouncer
    in transaction pooling mode.

    Starts ``pgbouncer`` in the foreground on a free loopback port (as the
    ``--pgstore-run-as`` user when running as root), in front of the
    throwaway server or the one ``--pgstore-dsn`` names, and stops it after
    the session. ``pool_mode = transaction`` with two server connections per
    database and user, so client connections share them as in production:
    whatever a client leaves on a server connection (``SET`` outside a
    transaction, a session advisory lock, a prepared statement, ``LISTEN``)
    is seen by other clients, or missing on the client's next transaction. A
    client waits at most 10 s for a server connection, so a transaction left
    open fails the next queries instead of hanging them. As PgBouncer does by
    default, it refuses a client that sends startup parameters it cannot
    keep per client (libpq ``options``). Any database name is forwarded to
    the same name on the server; ``dbname=pgbouncer`` is PgBouncer's admin
    console (``SHOW POOLS``).

    It does not empty tables between tests: use ``pgstore_pgbouncer_settings``
    or ``pgstore_pgbouncer_store``, or ask for ``pgstore_dsn`` too. Tests that
    use it are skipped when pgbouncer is not installed (Debian/Ubuntu:
    ``apt-get install pgbouncer``), unless ``--pgstore-pgbouncer`` names it.
    """
    from .pgbouncer import PgBouncer, find_pgbouncer

    given = _option(request.config, "pgbouncer")
    executable = find_pgbouncer(given)
    if executable is None:
        if given:
            pytest.fail(f"pytest_pgstore: --pgstore-pgbouncer: no program at {given}", pytrace=False)
        pytest.skip("pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer)")
    from psycopg2.extensions import parse_dsn

    # Asked for only now, so that a skip starts no PostgreSQL either.
    pgstore_server: Server = request.getfixturevalue("pgstore_server")
    bouncer = PgBouncer(
        executable,
        pgstore_server.admin_dsn,
        tmp_path_factory.mktemp("pgbouncer"),
        run_as=_run_as(request.config),
    )
    try:
        bouncer.start()
    except RuntimeError as exc:
        pytest.fail(f"pytest_pgstore: {exc}", pytrace=False)
    dsn = bouncer.dsn(parse_dsn(pgstore_server.dsn)["dbname"])
    _BOUNCER_DSNS.add(dsn)
    try:
        yield dsn
    finally:
        _BOUNCER_DSNS.discard(dsn)
        bouncer.stop()


@pytest.fixture
def pgstore_pgbouncer_settings(pgstore_pgbouncer_dsn: str, pgstore_dsn: str) -> dict[str, str]:
    """``pgstore_settings`` through PgBouncer: the database emptied as for
    ``pgstore_dsn``, reached through ``pgstore_pgbouncer_dsn``, and a random
    secret. Stores built on it during the test are closed after it."""
    return {"pgstore.dsn": pgstore_pgbouncer_dsn, "pgstore.secret": secrets.token_urlsafe(48)}


@pytest.fixture
def pgstore_pgbouncer_store(pgstore_pgbouncer_dsn: str, pgstore_dsn: str) -> Iterator[PGStore]:
    """A :class:`pyramid_pgstore.PGStore` on the emptied database through
    PgBouncer in transaction mode, closed after the test."""
    from pyramid_pgstore import PGStore

    store = PGStore(pgstore_pgbouncer_dsn)
    yield store
    store.close()


# -- sessions and the clock ------------------------------------------------------------


@pytest.fixture
def pgstore_sessions(pgstore_dsn: str) -> TestSessions:
    """Stored sessions for a WebTest app, without going through its views:
    ``pgstore_sessions.login(app, userid, **data)`` logs a test user in (like
    Django's ``force_login``), ``pgstore_sessions.start(app, data)`` gives the
    app's cookie jar a session holding ``data``, and
    ``pgstore_sessions.data(app)`` is what the app's session holds now (None:
    none). ``app`` is a ``webtest.TestApp`` of an app configured with
    ``config.include('pyramid_pgstore')`` (or its registry)."""
    from .sessions import TestSessions

    return TestSessions()


class StoreClock:
    """Moves "now" for every store and session factory in this process."""

    def advance(self, seconds: float) -> None:
        """Make it ``seconds`` later (sessions expire, reissue times pass)."""
        from pyramid_pgstore import testing

        testing.advance_clock(seconds)

    @property
    def offset(self) -> float:
        """Seconds added to the database clock so far in this test."""
        from pyramid_pgstore import testing

        return testing.clock_offset()


@pytest.fixture
def pgstore_clock() -> Iterator[StoreClock]:
    """A clock to advance instead of sleeping; back to real time after the test."""
    from pyramid_pgstore import testing

    yield StoreClock()
    testing.reset_clock()


# -- servers of a test's own: replica pairs --------------------------------------------


@pytest.fixture
def pgstore_replica_pair_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``make(synchronous=False, ...)`` starts a primary and a streaming replica (a ``ReplicaPair``
    of ``pytest_pgstore.localpair``), stopped after the test; skipped without ``pg_basebackup``."""
    from .replication import pair_factory

    bindir = os.path.dirname(_pg_ctl(request.config))
    yield from pair_factory(bindir, _run_as(request.config), request.getfixturevalue("tmp_path_factory"))


@pytest.fixture
def pgstore_replica_pair(pgstore_replica_pair_factory: Any) -> Any:
    """An asynchronous primary and replica: ``pgstore_replica_pair_factory()``."""
    return pgstore_replica_pair_factory()


@pytest.fixture
def pgstore_patroni_cluster_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``make(ttl=20, loop_wait=2, synchronous_mode=True, ...)`` starts etcd and three Patroni
    nodes (a ``PatroniCluster`` of ``pytest_pgstore.patroni``), stopped after the test; skipped
    without etcd and Patroni (``.ci/need-patroni`` installs them)."""
    from .patroni import cluster_factory

    bindir = os.path.dirname(_pg_ctl(request.config))
    yield from cluster_factory(bindir, _run_as(request.config))


@pytest.fixture
def pgstore_patroni_cluster(pgstore_patroni_cluster_factory: Any) -> Any:
    """A Patroni cluster of three nodes in synchronous mode: ``pgstore_patroni_cluster_factory()``."""
    return pgstore_patroni_cluster_factory()
