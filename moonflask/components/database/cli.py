"""``python -m moonflask.components.database {backup,restore,dump} DATA_PATH ...``
(the server must be stopped for ``restore``)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import lmdb

from ...api import ApiError
from .store import Database, DatabaseLocked


def _db_dir(data_path: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(data_path)), "database")


def main(argv: list[str] | None = None) -> int:
    """``python -m moonflask.components.database {backup,restore,dump} DATA_PATH ...``.

    Returns:
        the exit status (0 ok, 1 error, 2 database in use).
    """
    p = argparse.ArgumentParser(prog="python -m moonflask.components.database",
                                description="moonflask database backup / restore")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup", help="write a portable backup (Moonraker-schema SQLite)")
    b.add_argument("data_path")
    b.add_argument("out_file")
    r = sub.add_parser("restore", help="replace the database with a backup or a "
                       "Moonraker moonraker-sql.db (stop moonflask first)")
    r.add_argument("data_path")
    r.add_argument("in_file")
    d = sub.add_parser("dump", help="print the database (or one namespace) as JSON")
    d.add_argument("data_path")
    d.add_argument("namespace", nargs="?")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from . import migration as migrate
    path = _db_dir(args.data_path)
    try:
        if args.cmd == "backup":
            if not os.path.exists(os.path.join(path, "data.mdb")):
                print(f"no moonflask database in {path}", file=sys.stderr)
                return 1
            with Database(path, readonly=True) as db:
                out = db.backup(args.out_file)
                n = len(db.list_namespaces())
            print(f"backup of {n} namespaces written to {out}")
        elif args.cmd == "restore":
            data = migrate.read_sqlite(args.in_file)
            with Database(path, exclusive=True, import_moonraker=False) as db:
                db.replace_all(data)
            print(f"restored {len(data)} namespaces from {args.in_file}: "
                  + ", ".join(sorted(data)))
        else:
            with Database(path, readonly=True) as db:
                if args.namespace is None:
                    data = db.export_all()
                else:
                    data = db.get_item(args.namespace)
            json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
            print()
    except DatabaseLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (migrate.FormatError, OSError, lmdb.Error, ApiError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
