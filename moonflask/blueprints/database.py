"""Endpoints of the database API group.  Spec: web_api.md "Database APIs".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import (ApiBlueprint, ApiError,
                   ApiRequest)

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("database", __name__)


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


def list_result(req: ApiRequest, debug: bool) -> dict[str, Any]:
    """``{"namespaces", "backups"}`` (``debug``: every namespace, and ``tables``)."""
    db = req.server.lookup_component("database").db
    out: dict[str, Any] = {"namespaces": db.list_namespaces(client=not debug),
                           "backups": db.list_backups() if hasattr(db, "list_backups") else []}
    if debug:
        out["tables"] = []
    return out


def item_result(req: ApiRequest, debug: bool) -> dict[str, Any]:
    """Get/post/delete ``namespace``/``key`` by ``req.method``: ``{"namespace",
    "key", "value"}``; ``debug`` skips the client access rules.
    Raises: ApiError 400 (bad key or value), 403/404 (namespace rules)."""
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
    return list_result(req, False)


@blueprint.endpoint("/server/database/item", ["GET", "POST", "DELETE"])
def database_item(req: ApiRequest) -> dict[str, Any]:
    """"Get / Add / Delete Database Item": ``{"namespace", "key", "value"}``."""
    return item_result(req, False)
