"""Spoolman endpoints.  Spec: web_api.md "Spoolman APIs"."""
from __future__ import annotations

from typing import Any

from ..api import ApiBlueprint, ApiError, ApiRequest

blueprint = ApiBlueprint("spoolman", __name__, component="spoolman")


def _spoolman(req: ApiRequest) -> Any:
    return req.server.lookup_component("spoolman")


@blueprint.endpoint("/server/spoolman/status", ["GET"])
def spoolman_status(req: ApiRequest) -> dict[str, Any]:
    """"Get Spoolman Status": ``{"spoolman_connected", "pending_reports",
    "spool_id"}``."""
    return _spoolman(req).status()


@blueprint.endpoint("/server/spoolman/spool_id", ["GET", "POST"])
def spoolman_spool_id(req: ApiRequest) -> dict[str, Any]:
    """"Get active spool" / "Set active spool" (``server.spoolman.get_spool_id``
    / ``post_spool_id``): ``{"spool_id": int | null}``; POST without
    ``spool_id`` (or ``null``) clears it.  A non-integer id is a 400."""
    comp = _spoolman(req)
    if req.method == "GET":
        return {"spool_id": comp.spool_id}
    spool_id = req.args.get("spool_id")
    if spool_id is not None:
        spool_id = req.args.get_int("spool_id")
    return {"spool_id": comp.set_active_spool(spool_id)}


@blueprint.endpoint("/server/spoolman/proxy", ["POST"])
def spoolman_proxy(req: ApiRequest) -> Any:
    """"Proxy": ``request_method`` and ``path`` required, ``query``, ``body``
    and ``use_v2_response`` optional; see :meth:`Spoolman.proxy`."""
    method = req.args.get_str("request_method")
    path = req.args.get_str("path")
    query = req.args.get_str("query", None)
    body = req.args.get("body")
    use_v2 = req.args.get_boolean("use_v2_response", False)
    if body is not None and not isinstance(body, (dict, list)):
        raise ApiError("Argument 'body' must be a JSON object or array", 400)
    return _spoolman(req).proxy(method, path, query, body, use_v2)
