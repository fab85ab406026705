"""Endpoints of the history API group.  Spec: web_api.md "History APIs".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import (ApiBlueprint, ApiError,
                   ApiRequest)
from ..components.history import History

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("history", __name__)


def _history(req: ApiRequest) -> History:
    return req.server.lookup_component("history")


@blueprint.endpoint("/server/history/list", ["GET"])
def history_list(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get job list"."""
    args = req.args
    start = max(args.get_int("start", 0), 0)
    limit = args.get_int("limit", 50)
    since = args.get_float("since", None)
    before = args.get_float("before", None)
    order = args.get_str("order", "desc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(f"Invalid `order` value: {order.upper()}", 400)
    return _history(req).list_jobs(start, limit, since, before, order)


@blueprint.endpoint("/server/history/totals", ["GET"])
def history_totals(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get job totals"."""
    hist = _history(req)
    return {"job_totals": dict(hist.totals), "auxiliary_totals": hist.auxiliary_totals()}


@blueprint.endpoint("/server/history/reset_totals", ["POST"])
def history_reset_totals(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Reset totals"."""
    last, last_aux = _history(req).reset_totals()
    return {"last_totals": last, "last_auxiliary_totals": last_aux}


@blueprint.endpoint("/server/history/job", ["GET", "DELETE"])
def history_job(req: ApiRequest) -> Any:
    """web_api.md "Get a single job" / "Delete job"."""
    hist = _history(req)
    if req.method == "DELETE":
        return {"deleted_jobs": hist.delete_jobs(req.args.get_str("uid", None),
                                                 req.args.get_boolean("all", False))}
    return {"job": hist.get_job(req.args.get_str("uid"))}
