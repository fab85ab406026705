"""The ``machine.wled.*`` endpoints.  Spec: web_api.md "WLED APIs".

Batch endpoints (``status``, ``on``, ``off``, ``toggle``) take the strip
names as the argument names (``/machine/wled/on?lights&desk``).
"""
from __future__ import annotations

from typing import Any

from ..api import ApiBlueprint, ApiRequest

blueprint = ApiBlueprint("wled", __name__, component="wled")


def _wled(req: ApiRequest) -> Any:
    return req.server.lookup_component("wled")


@blueprint.endpoint("/machine/wled/strips", ["GET"])
def strips(req: ApiRequest) -> dict[str, Any]:
    """"Get strips": ``{"strips": {NAME: strip}}``."""
    return {"strips": _wled(req).all_status()}


@blueprint.endpoint("/machine/wled/status", ["GET"])
def status(req: ApiRequest) -> dict[str, Any]:
    """"Get strip status"."""
    return _wled(req).batch(list(req.args), "status")


def _batch(action: str):
    def handler(req: ApiRequest) -> dict[str, Any]:
        return _wled(req).batch(list(req.args), action)
    handler.__doc__ = f'"Turn strip {action}" / "Toggle strip on/off state": ``{{NAME: strip}}``.'
    handler.__name__ = f"wled_{action}"
    return handler


for _action in ("on", "off", "toggle"):
    blueprint.endpoint(f"/machine/wled/{_action}", ["POST"])(_batch(_action))


@blueprint.endpoint("/machine/wled/strip", ["GET", "POST"])
def strip(req: ApiRequest) -> dict[str, Any]:
    """"Control individual strip state": ``{NAME: strip}``."""
    wled = _wled(req)
    name = req.args.get_str("strip")
    if req.method == "GET":
        return {name: wled.get_strip(name).status()}
    args = req.args
    return wled.strip_action(name, args.get_str("action").lower(),
                             args.get_int("preset", -1), args.get_int("brightness", -1),
                             args.get_int("intensity", -1), args.get_int("speed", -1))
