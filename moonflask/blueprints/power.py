"""The ``machine.device_power.*`` endpoints.  Spec: web_api.md "Power APIs".

Batch endpoints (``status``, ``on``, ``off``) take the device names as the
argument names: ``/machine/device_power/status?printer&led`` or JSON-RPC
``{"printer": null, "led": null}``.
"""
from __future__ import annotations

from typing import Any

from ..api import ApiBlueprint, ApiRequest

blueprint = ApiBlueprint("power", __name__, component="power")


def _power(req: ApiRequest) -> Any:
    return req.server.lookup_component("power")


@blueprint.endpoint("/machine/device_power/devices", ["GET"])
def devices(req: ApiRequest) -> dict[str, Any]:
    """"Get Device List": ``{"devices": [{"device", "status",
    "locked_while_printing", "type"}]}``."""
    return {"devices": _power(req).device_list()}


@blueprint.endpoint("/machine/device_power/device", ["GET", "POST"])
def device(req: ApiRequest) -> dict[str, str]:
    """"Get Device Status" / "Set Device State": ``{NAME: state}``."""
    power = _power(req)
    name = req.args.get_str("device")
    if req.method == "GET":
        dev = power.get_device(name)
        dev.refresh_for_request()
        return {name: dev.state}
    action = req.args.get_str("action")
    power.get_device(name)
    return {name: power.request_action(name, action)}


@blueprint.endpoint("/machine/device_power/status", ["GET"])
def status(req: ApiRequest) -> dict[str, str]:
    """"Get Batch Device Status": ``{NAME: state | "device_not_found"}``."""
    return _power(req).status(list(req.args))


@blueprint.endpoint("/machine/device_power/on", ["POST"])
def power_on(req: ApiRequest) -> dict[str, str]:
    """"Batch Power On Devices"."""
    return _power(req).batch(list(req.args), "on")


@blueprint.endpoint("/machine/device_power/off", ["POST"])
def power_off(req: ApiRequest) -> dict[str, str]:
    """"Batch Power Off Devices"."""
    return _power(req).batch(list(req.args), "off")
