"""Endpoints of the machine API group.  Spec: web_api.md "Machine APIs".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import (ApiBlueprint, ApiRequest)
from ..components.machine import SERVICE_ACTIONS, Machine, peripherals

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("machine", __name__)


def _machine(req: ApiRequest) -> Machine:
    return req.server.lookup_component("machine")


@blueprint.endpoint("/machine/system_info", ["GET"])
def system_info(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get System Info"."""
    return {"system_info": _machine(req).system_info()}


@blueprint.endpoint("/machine/shutdown", ["POST"])
def shutdown(req: ApiRequest) -> str:
    """web_api.md "Shutdown the Operating System"."""
    _machine(req).power("shutdown")
    return "ok"


@blueprint.endpoint("/machine/reboot", ["POST"])
def reboot(req: ApiRequest) -> str:
    """web_api.md "Reboot the Operating System"."""
    _machine(req).power("reboot")
    return "ok"


def _service_endpoint(action: str):
    def handler(req: ApiRequest) -> str:
        _machine(req).service_action(action, req.args.get_str("service"))
        return "ok"
    handler.__name__ = f"services_{action}"
    handler.__doc__ = f"web_api.md \"{action.capitalize()} a system service\"."
    return handler


for _action in SERVICE_ACTIONS:
    blueprint.endpoint(f"/machine/services/{_action}", ["POST"])(_service_endpoint(_action))


@blueprint.endpoint("/machine/sudo/info", ["GET"])
def sudo_info(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get Sudo Info"."""
    return _machine(req).sudo.info(req.args.get_boolean("check_access", False))


@blueprint.endpoint("/machine/sudo/password", ["POST"])
def sudo_password(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Set sudo password"."""
    return _machine(req).sudo.set_password(req.args.get_str("password"))


@blueprint.endpoint("/machine/peripherals/usb", ["GET"])
def peripherals_usb(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List USB Devices"."""
    return {"usb_devices": peripherals.usb_devices()}


@blueprint.endpoint("/machine/peripherals/serial", ["GET"])
def peripherals_serial(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List Serial Devices"."""
    return {"serial_devices": peripherals.serial_devices()}


@blueprint.endpoint("/machine/peripherals/video", ["GET"])
def peripherals_video(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List Video Capture Devices"."""
    return {"v4l2_devices": peripherals.v4l2_devices(),
            "libcamera_devices": peripherals.libcamera_devices()}


@blueprint.endpoint("/machine/peripherals/canbus", ["GET"])
def peripherals_canbus(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Query Unassigned Canbus UUIDs"."""
    interface = req.args.get_str("interface", "can0")
    return {"can_uuids": _machine(req).query_can(interface)}


@blueprint.endpoint("/machine/proc_stats", ["GET"])
def proc_stats(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get Moonraker Process Stats"."""
    return req.server.lookup_component("proc_stats").get_stats()
