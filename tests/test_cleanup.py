"""Cleanup: batched, one cleaner at a time, and the pgstore-cleanup script."""

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg2
import pytest
from db import sql

from pyramid_pgstore import Cleaner, PGStore
from pyramid_pgstore.scripts.cleanup import main
from pyramid_pgstore.scripts.schema import main as schema_main


def add_rows(dsn, count, expired, prefix):
    """Insert ``count`` sessions straight into the table, expired or live."""
    sql(
        dsn,
        "INSERT INTO http_sessions (key, data, created_on, modified_on, expires_on)"
        " SELECT encode(sha256((%s || n)::bytea), 'hex'), '{\"n\":1}', now(), now(),"
        "  now() + CASE WHEN %s THEN interval '-1 hour' ELSE interval '1 hour' END"
        " FROM generate_series(1, %s) AS n",
        (prefix, expired, count),
    )


def counts(dsn):
    return sql(
        dsn,
        "SELECT count(*) FILTER (WHERE expires_on > now()), count(*) FILTER (WHERE expires_on <= now())"
        " FROM http_sessions",
    )[0]


class CleanupLockHolder:
    """Another cleaner, as PostgreSQL sees it: the table's cleanup lock held
    in an open transaction."""

    def __init__(self, dsn):
        self.conn = psycopg2.connect(dsn)
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext('pyramid_pgstore cleanup ' || %s))",
                ('"http_sessions"',),
            )
            assert cur.fetchone() == (True,)

    def release(self):
        self.conn.rollback()
        self.conn.close()


@pytest.fixture
def ini(tmp_path, pgstore_store, pgstore_dsn):
    """An app's ini file with the test database (the table exists)."""
    path = tmp_path / "app.ini"
    path.write_text(
        f"[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = {pgstore_dsn}\npgstore.secret = {'s' * 40}\n"
    )
    return str(path)


# -- the Cleaner ------------------------------------------------------------------


def test_a_pass_deletes_only_expired_rows(pgstore_store, pgstore_dsn):
    add_rows(pgstore_dsn, 300, expired=True, prefix="old")
    add_rows(pgstore_dsn, 40, expired=False, prefix="live")
    result = Cleaner(pgstore_store, batch_size=100).run_once()
    assert (result.deleted, result.batches, result.skipped) == (300, 4, False)
    assert counts(pgstore_dsn) == (40, 0)


def test_batches_are_bounded_statements(pgstore_store, pgstore_dsn):
    add_rows(pgstore_dsn, 50_000, expired=True, prefix="old")
    before = pgstore_store.stats()["queries"]
    result = Cleaner(pgstore_store, batch_size=1000).run_once()
    statements = pgstore_store.stats()["queries"] - before
    assert result.deleted == 50_000
    assert statements >= 50  # never one statement for the lot
    assert result.batches == statements == 51  # the 51st finds nothing left


def test_a_second_cleaner_skips_while_one_runs(pgstore_store, pgstore_dsn):
    add_rows(pgstore_dsn, 10, expired=True, prefix="old")
    holder = CleanupLockHolder(pgstore_dsn)
    try:
        result = Cleaner(pgstore_store).run_once()
    finally:
        holder.release()
    assert result.skipped and result.deleted == 0
    assert counts(pgstore_dsn) == (0, 10)
    assert Cleaner(pgstore_store).run_once().deleted == 10


def test_two_cleaners_started_together_do_not_both_run(pgstore_dsn, pgstore_store):
    add_rows(pgstore_dsn, 20_000, expired=True, prefix="old")
    stores = [PGStore(pgstore_dsn), PGStore(pgstore_dsn)]
    results = []
    barrier = threading.Barrier(2)

    def clean(store):
        barrier.wait()
        results.append(Cleaner(store, batch_size=100).run_once())

    threads = [threading.Thread(target=clean, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        # Against a hang only: the pass takes seconds on PostgreSQL, a minute
        # on a busy Citus cluster (each batch there fans out to every shard twice).
        thread.join(300)
    for store in stores:
        store.close()
    assert sorted(r.skipped for r in results) == [False, True]
    assert sum(r.deleted for r in results) == 20_000


def test_a_stop_request_ends_the_pass_after_the_current_batch(pgstore_store, pgstore_dsn):
    add_rows(pgstore_dsn, 1000, expired=True, prefix="old")
    stop = threading.Event()
    result = Cleaner(pgstore_store, batch_size=100).run_once(
        stop=stop, on_batch=lambda deleted, s: stop.set()
    )
    assert (result.deleted, result.batches) == (100, 1)


def test_the_in_app_cleanup_is_the_same_locked_pass(pgstore_dsn, pgstore_store):
    add_rows(pgstore_dsn, 10, expired=True, prefix="old")
    holder = CleanupLockHolder(pgstore_dsn)
    stop = threading.Event()
    runs = pgstore_store.run_cleanup(0.01, stop)
    try:
        assert next(runs) == 0  # the other cleaner has the table
    finally:
        holder.release()
    assert next(runs) == 10
    stop.set()


# -- the script -------------------------------------------------------------------


def test_the_script_deletes_expired_sessions_and_says_how_many(ini, pgstore_dsn, capsys):
    add_rows(pgstore_dsn, 2500, expired=True, prefix="old")
    add_rows(pgstore_dsn, 7, expired=False, prefix="live")
    assert main(["pgstore-cleanup", ini, "--batch-size", "1000"]) == 0
    out = capsys.readouterr().out
    assert "deleted 2,500 expired sessions from http_sessions in 3 batches" in out
    assert counts(pgstore_dsn) == (7, 0)


def test_dry_run_and_stats_delete_nothing(ini, pgstore_dsn, capsys):
    add_rows(pgstore_dsn, 12, expired=True, prefix="old")
    add_rows(pgstore_dsn, 5, expired=False, prefix="live")
    assert main(["pgstore-cleanup", ini, "--dry-run", "--stats"]) == 0
    out = capsys.readouterr().out
    assert "http_sessions: 5 live, 12 expired; table " in out
    assert "would delete 12 expired sessions" in out
    assert counts(pgstore_dsn) == (5, 12)


def test_dry_run_counts_what_a_pass_then_deletes(ini, pgstore_dsn, capsys):
    """Ended sessions stay for ENDED_GRACE (requests in flight with their
    cookie see "ended"): the dry run leaves them out of its count, as the
    pass leaves them in the table."""
    add_rows(pgstore_dsn, 4, expired=True, prefix="old")
    add_rows(pgstore_dsn, 3, expired=False, prefix="live")
    for key, ended in [
        ("ended-now-1", "now()"),
        ("ended-now-2", "now()"),
        ("ended-long-ago", "now() - interval '2 minutes'"),
    ]:
        sql(
            pgstore_dsn,
            "INSERT INTO http_sessions (key, data, created_on, modified_on, expires_on)"
            f" VALUES (%s, '', now() - interval '1 hour', {ended}, {ended})",
            (key,),
        )
    assert main(["pgstore-cleanup", ini, "--dry-run", "--stats"]) == 0
    out = capsys.readouterr().out
    assert "3 live, 7 expired (2 of them ended in the last minute, kept for requests in flight);" in out
    assert "would delete 5 expired sessions" in out
    assert counts(pgstore_dsn) == (3, 7)  # the dry run deleted nothing
    assert main(["pgstore-cleanup", ini]) == 0
    assert "deleted 5 expired sessions" in capsys.readouterr().out
    assert sorted(key for (key,) in sql(pgstore_dsn, "SELECT key FROM http_sessions WHERE data = ''")) == [
        "ended-now-1",
        "ended-now-2",
    ]


def test_the_script_skips_while_another_cleaner_runs_and_exits_0(ini, pgstore_dsn, capsys):
    add_rows(pgstore_dsn, 3, expired=True, prefix="old")
    holder = CleanupLockHolder(pgstore_dsn)
    try:
        assert main(["pgstore-cleanup", ini]) == 0
    finally:
        holder.release()
    assert "another cleaner is running on http_sessions; nothing done" in capsys.readouterr().out
    assert counts(pgstore_dsn) == (0, 3)


def test_with_wait_the_script_runs_once_the_other_cleaner_is_done(ini, pgstore_dsn, capsys):
    add_rows(pgstore_dsn, 3, expired=True, prefix="old")
    holder = CleanupLockHolder(pgstore_dsn)
    threading.Timer(0.7, holder.release).start()
    assert main(["pgstore-cleanup", ini, "--wait"]) == 0
    assert "deleted 3 expired sessions" in capsys.readouterr().out


def test_a_pgstore_override_on_the_command_line_wins(ini, pgstore_dsn, capsys):
    add_rows(pgstore_dsn, 3, expired=True, prefix="old")
    assert main(["pgstore-cleanup", ini, "pgstore.table=missing_table"]) == 1
    assert 'relation "missing_table" does not exist' in capsys.readouterr().err
    assert counts(pgstore_dsn) == (0, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such.ini"], "no such config file: /no/such.ini"),
        (["{ini}#nosuchsection"], "cannot read"),
        (["{ini}", "not-a-pair"], "not-a-pair"),
        (["{empty_ini}"], "pgstore.dsn: is required"),
        (["{ini}", "pgstore.pool_timeout=soon"], "pgstore.pool_timeout: must be a number"),
    ],
)
def test_configuration_errors_exit_2_with_a_message_and_no_traceback(ini, tmp_path, capsys, argv, message):
    empty_ini = tmp_path / "empty.ini"
    empty_ini.write_text("[app:main]\nuse = egg:WebTest#debug\n")
    argv = [arg.format(ini=ini, empty_ini=empty_ini) for arg in argv]
    assert main(["pgstore-cleanup", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("prog, main_of", [("pgstore-cleanup", main), ("pgstore-schema", schema_main)])
def test_an_engine_the_store_cannot_borrow_from_exits_2_naming_the_setting(prog, main_of, tmp_path, capsys):
    """pgstore.engine naming a psycopg 3 engine: refused as config.include
    refuses it, in one line that says what to set instead."""
    path = tmp_path / "psycopg3.ini"
    path.write_text(
        "[app:main]\nuse = egg:WebTest#debug\npgstore.engine = sqlalchemy.\n"
        "sqlalchemy.url = postgresql+psycopg://app@127.0.0.1:9/app\n"
    )
    assert main_of([prog, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{prog}: {path}: pgstore.engine: the engine is postgresql+psycopg;" in err
    assert "pgstore.dsn = the engine's URL" in err
    assert len(err.splitlines()) == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pgstore-cleanup", "x.ini", "--batch-size", "0"])
    assert info.value.code == 2
    assert "must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("prog, main_of", [("pgstore-cleanup", main), ("pgstore-schema", schema_main)])
def test_a_missing_ini_file_argument_names_only_that_argument(prog, main_of, capsys):
    with pytest.raises(SystemExit) as info:
        main_of([prog])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "required: config_uri" in err
    assert "name=value" not in err.splitlines()[-1]  # the variables are optional


def test_an_unreachable_database_exits_1(tmp_path, capsys):
    path = tmp_path / "down.ini"
    path.write_text(
        "[app:main]\nuse = egg:WebTest#debug\npgstore.dsn = host=127.0.0.1 port=9 user=x dbname=x\n"
    )
    assert main(["pgstore-cleanup", str(path)]) == 1
    err = capsys.readouterr().err
    assert "database error: cannot connect" in err
    assert "Traceback" not in err


def test_sigterm_during_interval_mode_exits_cleanly(ini, pgstore_dsn):
    add_rows(pgstore_dsn, 5, expired=True, prefix="old")
    script = os.path.join(os.path.dirname(sys.executable), "pgstore-cleanup")
    process = subprocess.Popen(
        [script, ini, "--interval", "30"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    deadline = time.monotonic() + 30
    while not any("deleted 5 expired" in line for line in lines):
        assert time.monotonic() < deadline and process.poll() is None, lines
        lines.append(process.stdout.readline())
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "stopped" in output
    assert "Traceback" not in output


def test_a_negative_rest_is_refused(pgstore_store, ini, capsys):
    with pytest.raises(ValueError, match="rest"):
        Cleaner(pgstore_store, rest=-1)
    assert main(["pgstore-cleanup", ini, "--rest", "-1"]) == 2
    assert "--rest must be 0 or more" in capsys.readouterr().err
