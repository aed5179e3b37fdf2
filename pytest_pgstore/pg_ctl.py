"""``pgstore-pg-ctl``: pg_ctl, run as an unprivileged user when started by root.

PostgreSQL refuses to run as root, and tests in containers and CI often do.
pytest-postgresql starts its server through one executable, so the plugin
points it here. This program finds the real ``pg_ctl`` (``PGSTORE_PG_CTL``),
and when it runs as root and ``PGSTORE_RUN_AS`` names a user, it hands the
server's directory to that user, drops root, and runs pg_ctl as that user.
Started by a normal user, it simply runs pg_ctl.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

RUN_AS_ENV = "PGSTORE_RUN_AS"
PG_CTL_ENV = "PGSTORE_PG_CTL"


def launcher_path() -> str:
    """Where this program, the console script ``pgstore-pg-ctl``, is installed."""
    name = "pgstore-pg-ctl"
    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)


def find_pg_ctl(bindir: str = "") -> str:
    """The real pg_ctl: in ``bindir`` if given, else where pg_config says,
    else on PATH, else the newest /usr/lib/postgresql/*/bin (Debian's place).

    :raises FileNotFoundError: with what to install.
    """
    if bindir:
        candidates = [os.path.join(bindir, "pg_ctl")]
    else:
        candidates = []
        try:
            found = subprocess.run(
                ["pg_config", "--bindir"],  # noqa: S607 - found on PATH, as libpq documents
                capture_output=True,
                text=True,
                timeout=30,
            )
            candidates.append(os.path.join(found.stdout.strip(), "pg_ctl"))
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(shutil.which("pg_ctl") or "")
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key, reverse=True)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "PostgreSQL's server programs were not found "
        f"(looked at {', '.join(c for c in candidates if c) or 'nothing'}). "
        "Install them (Debian/Ubuntu: apt-get install postgresql) and point "
        "--pgstore-pg-bindir at the directory holding pg_ctl, or give an "
        "existing server with --pgstore-dsn."
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = path.split("/")[-3]
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def default_run_as_user() -> str:
    """The unprivileged user to run PostgreSQL as: postgres if it exists, else nobody."""
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        return "nobody"


def _data_dir(args: list[str]) -> Path | None:
    """The data directory named by ``initdb --pgdata X`` or ``start -D X``."""
    for flag in ("--pgdata", "-D"):
        if flag in args[:-1]:
            return Path(args[args.index(flag) + 1])
    return None


def _open_path_to(directory: Path) -> None:
    """Let other users traverse (not list) every ancestor of ``directory``.

    pytest makes its temporary directories private to root (mode 0700); the
    server's user must at least pass through them to reach its own directory.
    """
    for ancestor in directory.parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(ancestor, stat.S_IMODE(mode) | stat.S_IXOTH)


def _hand_over(args: list[str], user: pwd.struct_passwd) -> Path | None:
    """Give ``user`` the directory holding the data directory and log file.

    The path is opened again on every call, not only at initdb: a pytest run
    started meanwhile resets its temporary root to 0700, which would lock
    pg_ctl out of the server it must later query and stop.
    """
    data_dir = _data_dir(args)
    if data_dir is None:
        return None
    parent = data_dir.resolve().parent
    _open_path_to(parent)
    if args[0] == "initdb":
        os.chown(parent, user.pw_uid, user.pw_gid)
    return parent


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    pg_ctl = os.environ.get(PG_CTL_ENV)
    if not pg_ctl:
        sys.exit(f"pgstore-pg-ctl: set {PG_CTL_ENV} to the path of PostgreSQL's pg_ctl")
    run_as = os.environ.get(RUN_AS_ENV)
    if os.geteuid() == 0 and run_as:
        try:
            user = pwd.getpwnam(run_as)
        except KeyError:
            sys.exit(f"pgstore-pg-ctl: no user {run_as!r} to run PostgreSQL as (see --pgstore-run-as)")
        workdir = _hand_over(args, user)
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        # pg_ctl and postgres look at their working directory, which root's may hide.
        os.chdir(workdir or "/")
    os.execv(pg_ctl, [pg_ctl, *args])  # noqa: S606 - replacing this process is the point


if __name__ == "__main__":
    main()
