"""Endpoints of the debug API group, registered only when moonflask runs
with ``-g`` (elsewhere they do not exist: 404 / -32601, as Moonraker).
Spec: web_api.md "Debug APIs" (database, notifier test); the worker
endpoints are moonflask's own (DESIGN.md "Concurrency").
"""
from __future__ import annotations

from typing import Any

from ..api import ApiBlueprint, ApiError, ApiRequest
from .database import item_result, list_result

blueprint = ApiBlueprint("debug", __name__)


@blueprint.endpoint("/debug/database/list", ["GET"])
def debug_database_list(req: ApiRequest) -> dict[str, Any]:
    """"List Database Namespaces": every namespace, forbidden ones included."""
    return list_result(req, True)


@blueprint.endpoint("/debug/database/item", ["GET", "POST", "DELETE"])
def debug_database_item(req: ApiRequest) -> dict[str, Any]:
    """Get/post/delete an item of any namespace, protected and forbidden
    ones included."""
    return item_result(req, True)


@blueprint.endpoint("/debug/notifiers/test", ["POST"])
def notifiers_test(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Test a notifier": ``{"status": "success"|"failure", "stats"}``."""
    return req.server.lookup_component("notifier").test(req.args.get_str("name"))


@blueprint.endpoint("/debug/workers", ["GET"])
def workers_status(req: ApiRequest) -> dict[str, Any]:
    """Every supervised worker: ``{"workers": {name: {"running", "restarts",
    "failures", "last_error"}}}``."""
    return {"workers": req.server.workers.status()}


@blueprint.endpoint("/debug/workers/fault", ["POST"])
def workers_fault(req: ApiRequest) -> dict[str, Any]:
    """Raise a fault inside worker ``name`` (it is restarted, as after any
    failure, and the failure is logged).  Returns ``{"name", "restarts"}``.
    Raises: ApiError 404 for an unknown worker."""
    name = req.args.get_str("name")
    try:
        req.server.workers.inject_fault(name)
    except KeyError:
        raise ApiError(f"No worker named {name}", 404) from None
    return {"name": name, "restarts": req.server.workers.workers[name].restarts}
