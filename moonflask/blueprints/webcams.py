"""Endpoints of the webcams API group.  Spec: web_api.md "Webcam APIs".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import (ApiBlueprint, ApiRequest)
from ..components.webcam import Webcams

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("webcams", __name__)


def _cams(req: ApiRequest) -> Webcams:
    return req.server.lookup_component("webcam")


@blueprint.endpoint("/server/webcams/list", ["GET"])
def webcams_list(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List Webcams"."""
    return {"webcams": _cams(req).list()}


@blueprint.endpoint("/server/webcams/item", ["GET", "POST", "DELETE"])
def webcams_item(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get Webcam Information", "Add or update a webcam",
    "Delete a webcam"."""
    cams = _cams(req)
    uid = req.args.get_str("uid", None)
    name = req.args.get_str("name", None)
    if req.method == "POST":
        return {"webcam": cams.add_or_update(req.args)}
    if req.method == "DELETE":
        return {"webcam": cams.delete(uid, name)}
    return {"webcam": cams.find(uid, name)}


@blueprint.endpoint("/server/webcams/test", ["POST"])
def webcams_test(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Test a webcam"."""
    return _cams(req).test(req.args.get_str("uid", None), req.args.get_str("name", None))
