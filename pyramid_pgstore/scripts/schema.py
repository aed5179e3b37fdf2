"""``pgstore-schema CONFIG_URI [name=value ...] [--apply]``: the table's SQL.

Prints the SQL that creates the sessions table (when there is none) or
upgrades it to this release's layout (when it has an older one), and
nothing when it is current: for teams that own their schema (Alembic) to
paste into a migration. ``--apply`` runs it, as ``config.include`` would.
Reads the ini file like ``pgstore-cleanup``.
"""

from __future__ import annotations

import argparse
import sys

from pyramid_pgstore import schema
from pyramid_pgstore.store import PGStore

from .common import DATABASE_ERROR, config_parser, fail, run_on_store

DESCRIPTION = """\
Print the SQL that creates the pyramid_pgstore sessions table named by the
pgstore.* settings of CONFIG_URI (when it does not exist) or upgrades it to
this release's layout (when it has an older one); print nothing when it is
current. Upgrades only add (columns, indexes): rows and live sessions stay.
"""

EPILOG = """\
exit status: 0 done (SQL printed, applied, or nothing to do), 1 database
error (or a table that is not a sessions table), 2 usage or configuration error.

examples:
  pgstore-schema production.ini            the SQL, to paste into a migration
  pgstore-schema production.ini --apply    run it (under the same lock as the app)
"""


def _parser() -> argparse.ArgumentParser:
    parser = config_parser("pgstore-schema", DESCRIPTION, EPILOG)
    parser.add_argument("--apply", action="store_true", help="run the SQL instead of printing it")
    return parser


def _print_or_apply(store: PGStore, apply: bool) -> int:
    state = store.table_state()
    try:
        needed = schema.needed_sql(store.table, state)
    except ValueError as exc:
        fail("pgstore-schema", str(exc))
        return DATABASE_ERROR
    if apply:
        for statement in store.prepare_table():
            print(f"-- applied: {statement};")
    else:
        for statement in needed:
            print(f"{statement};")
    if not needed:  # on stderr: the SQL on stdout stays empty, for a migration
        print(f"pgstore-schema: {store.table} is at schema {schema.VERSION}: nothing to do", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv[1:])
    return run_on_store("pgstore-schema", args, lambda store: _print_or_apply(store, args.apply))


if __name__ == "__main__":
    sys.exit(main())
