"""The ``database`` component: the LMDB store and its client API.
Spec: web_api.md "Database APIs", "Debug APIs" (database part).

``load_component`` opens :class:`moonflask.database.Database` on
``DATA_PATH/database/``, publishes it as ``server.database`` (every other
component stores its state through it) and, on the first start with an empty
database, imports a Moonraker database (``moonraker-sql.db``) found there.

Client rules (as Moonraker 0.11.0 answers them):
- ``moonraker``, ``gcode_metadata``, ``history`` and ``announcements`` are
  readable but not writable: 403 "Write access to namespace 'NS' is forbidden";
- forbidden namespaces (``authorized_users``: credentials) are not listed,
  and 403 "Read/Write access to namespace 'NS' is forbidden" otherwise
  (the rules live in ``Database.check_client_access``);
- keys are dotted strings or arrays (items converted to strings), so keys
  containing dots are reachable; an empty key is 400 "Invalid Key Format: ''",
  a key of another type 400 "Value for argument 'key' is an invalid type: T";
- ``debug.database.*`` bypass those rules and exist only with ``-g``.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .api import ApiBlueprint, ApiError, ApiRequest, HTTP

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("database", __name__, component="database")


class DatabaseComponent:
    """What ``server.components["database"]`` holds: the
    :class:`moonflask.database.Database` (attribute ``db``); other
    attributes are forwarded to it."""

    def __init__(self, server: Any, db: Any) -> None:
        self.server = server
        self.db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def load_component(server: Any, section: Any) -> DatabaseComponent:
    """Open the database in ``DATA_PATH/database/`` and set ``server.database``.
    On the first open of an empty store, ``Database`` imports
    ``DATA_PATH/database/moonraker-sql.db`` (Moonraker >= 0.9) when present.

    Returns: the :class:`DatabaseComponent`.
    Raises: ``DatabaseLocked`` / ``lmdb.Error`` when the store cannot be opened.
    """
    from .database import Database
    db = Database(os.path.join(server.data_path, "database"), import_moonraker=True)
    if db.imported:
        log.info("database: imported Moonraker database: %s", db.imported)
    server.database = db
    return DatabaseComponent(server, db)


def _key_arg(raw: Any) -> Any:
    """Numbers inside an array key are used as strings (as Moonraker does)."""
    if isinstance(raw, list):
        return [str(p) if isinstance(p, (int, float)) and not isinstance(p, bool) else p
                for p in raw]
    return raw


def _namespace_arg(req: ApiRequest) -> str:
    ns = req.args.get_str("namespace")
    if not ns:
        raise ApiError("Invalid namespace: ''", 400)
    return ns


def _list(req: ApiRequest, debug: bool) -> dict[str, Any]:
    db = req.server.lookup_component("database").db
    out: dict[str, Any] = {"namespaces": db.list_namespaces(client=not debug),
                           "backups": db.list_backups() if hasattr(db, "list_backups") else []}
    if debug:
        out["tables"] = []
    return out


def _item(req: ApiRequest, debug: bool) -> dict[str, Any]:
    db = req.server.lookup_component("database").db
    ns = _namespace_arg(req)
    write = req.method != "GET"
    if not debug:
        db.check_client_access(ns, write)
    raw_key = req.args.get("key")
    key = _key_arg(raw_key)
    if req.method == "GET":
        return {"namespace": ns, "key": raw_key, "value": db.get_item(ns, key)}
    if raw_key is None:
        raise ApiError("No data for argument: key", 400)
    if req.method == "POST":
        if "value" not in req.args:
            raise ApiError("No data for argument: value", 400)
        value = db.insert_item(ns, key, req.args.get("value"))
        return {"namespace": ns, "key": raw_key, "value": value}
    return {"namespace": ns, "key": raw_key, "value": db.delete_item(ns, key)}


@blueprint.endpoint("/server/database/list", ["GET"])
def database_list(req: ApiRequest) -> dict[str, Any]:
    """"List namespaces": ``{"namespaces": [...], "backups": []}``."""
    return _list(req, False)


@blueprint.endpoint("/server/database/item", ["GET", "POST", "DELETE"])
def database_item(req: ApiRequest) -> dict[str, Any]:
    """"Get / Add / Delete Database Item": ``{"namespace", "key", "value"}``."""
    return _item(req, False)


def _require_debug(req: ApiRequest) -> None:
    if not req.server.debug:
        raise ApiError("Not Found" if req.transport == HTTP else "Method not found", 404)


@blueprint.endpoint("/debug/database/list", ["GET"])
def debug_database_list(req: ApiRequest) -> dict[str, Any]:
    """Debug "List Database Namespaces": every namespace, with ``-g`` only."""
    _require_debug(req)
    return _list(req, True)


@blueprint.endpoint("/debug/database/item", ["GET", "POST", "DELETE"])
def debug_database_item(req: ApiRequest) -> dict[str, Any]:
    """Debug get/post/delete item: protected and forbidden namespaces
    included, with ``-g`` only."""
    _require_debug(req)
    return _item(req, True)
