"""``pgstore-sessions CONFIG_URI list|revoke USERID [name=value ...]``: one
user's sessions, for an operator.

``list`` prints one line per live session of the user; ``revoke`` ends them
all (signs the user out everywhere: a compromised account, say) and prints
how many. Reads the app's ini file like ``pgstore-cleanup``; it does not load
the app, so no ``SessionEnded`` event is notified: log what you revoke.
"""

from __future__ import annotations

import argparse
import sys

from pyramid_pgstore.records import SessionInfo
from pyramid_pgstore.store import PGStore

from .common import run_on_store

DESCRIPTION = """\
List or end the live sessions of one user (the value the app's sessions hold
under pgstore.userid_key, compared as text) in the pyramid_pgstore table
named by the pgstore.* settings of CONFIG_URI (an ini file, optionally with
#section).

list    one line per live session, most recently seen first: its handle (the
        storage key: safe to show, never usable as a cookie), created, last
        seen, IP address and User-Agent (- where not recorded)
revoke  end every live session of the user at once (requests in flight with
        their cookies cannot write them back), and print how many
"""

EPILOG = """\
exit status: 0 done, 1 database error, 2 usage or configuration error.

examples:
  pgstore-sessions production.ini list 42
  pgstore-sessions production.ini revoke 42
  pgstore-sessions production.ini#main list ann@example.com pgstore.dsn=postgresql://ops@db/app
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgstore-sessions",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config_uri", help="the app's ini file, e.g. production.ini or production.ini#main")
    parser.add_argument("command", choices=("list", "revoke"), help="what to do")
    parser.add_argument("userid", help="the user, as the sessions' userid_key holds it (compared as text)")
    parser.add_argument(
        "config_vars",
        nargs="*",
        default=[],
        metavar="name=value",
        help="a variable for %%(name)s in the ini file, as in Pyramid's scripts; "
        "a pgstore.* name overrides that setting",
    )
    return parser


def line(info: SessionInfo) -> str:
    """One session as ``list`` prints it."""
    when = "%Y-%m-%d %H:%M:%S%z"
    fields = [
        info.handle,
        info.created_on.strftime(when),
        info.last_seen.strftime(when),
        info.ip or "-",
        " ".join((info.user_agent or "-").split()),  # one line, whatever the header held
    ]
    return "  ".join(fields)


def _run(store: PGStore, command: str, userid: str) -> int:
    if command == "list":
        found = store.sessions_of(userid)
        for info in found:
            print(line(info))
        if not found:
            print(f"pgstore-sessions: no live sessions of user {userid!r}", file=sys.stderr)
        return 0
    ended = store.delete_sessions_of(userid)
    print(f"revoked {ended} session{'' if ended == 1 else 's'} of user {userid!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv[1:])
    return run_on_store("pgstore-sessions", args, lambda store: _run(store, args.command, args.userid))


if __name__ == "__main__":
    sys.exit(main())
