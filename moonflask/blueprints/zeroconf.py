"""Zeroconf endpoints: the SSDP device description (configuration.md
"[zeroconf]" ``enable_ssdp``; its shape is the reference's)."""
from __future__ import annotations

import flask

from ..api import HTTP, ApiBlueprint, ApiError, ApiRequest

blueprint = ApiBlueprint("zeroconf", __name__, component="zeroconf")


@blueprint.endpoint("/server/zeroconf/ssdp", ["GET"], rpc="", transports={HTTP}, wrap=False,
                    auth=False)
def ssdp_description(req: ApiRequest) -> flask.Response:
    """The UPnP description XML (``application/xml``); 404 without ``enable_ssdp``.
    No credentials needed (UPnP control points have none; as the reference)."""
    comp = req.server.lookup_component("zeroconf")
    if not comp.enable_ssdp:
        raise ApiError("Not Found", 404)
    return flask.Response(comp.ssdp_description(), content_type="application/xml")
