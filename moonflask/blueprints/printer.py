"""Printer administration, status, G-code and print management endpoints.

Spec: web_api.md "Printer Administration", "Printer Status", "GCode APIs",
"Print Management".  Each handler is a thin call into :class:`moonflask.klippy.Klippy`.
"""
from __future__ import annotations

from typing import Any

from ..api import HTTP, ApiBlueprint, ApiError, ApiRequest

blueprint = ApiBlueprint("printer", __name__, component="klippy_apis")


def klippy_endpoint(path: str):
    """Declare a Klippy-backed endpoint: like the reference, it answers both
    GET and POST under one JSON-RPC name derived from the path."""
    return blueprint.endpoint(path, ["GET", "POST"], rpc=path.strip("/").replace("/", "."))


def _objects_arg(req: ApiRequest) -> dict[str, list[str] | None]:
    """The ``objects`` argument: a JSON object ``{name: [fields] | null}``;
    over HTTP also the query form ``?toolhead&extruder=target,temperature``."""
    args = req.args
    if "objects" in args and isinstance(args["objects"], dict):
        raw = args["objects"]
    elif req.transport == HTTP:
        raw = {k: v for k, v in args.items() if k != "connection_id"}
        raw = {k: (v.split(",") if isinstance(v, str) and v else v or None)
               for k, v in raw.items()}
    else:
        if "objects" not in args:
            raise ApiError("Missing Argument [objects]", 400)
        if not isinstance(args["objects"], dict):
            raise ApiError("Invalid Argument Type [objects]", 400)
        raw = args["objects"]
    objects: dict[str, list[str] | None] = {}
    for name, fields in raw.items():
        if isinstance(fields, str):
            fields = [f.strip() for f in fields.split(",") if f.strip()] or None
        if fields is not None and (not isinstance(fields, list)
                                   or not all(isinstance(f, str) for f in fields)):
            raise ApiError(f"Invalid argument for object '{name}': expected a list of "
                           "field names or null", 400)
        objects[str(name)] = fields
    return objects


@klippy_endpoint("/printer/info")
def printer_info(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get Klippy host information": Klippy's ``info`` reply."""
    info = req.server.klippy.request("info", {})
    return info


@klippy_endpoint("/printer/emergency_stop")
def emergency_stop(req: ApiRequest) -> str:
    """web_api.md "Emergency Stop"."""
    req.server.klippy.request("emergency_stop")
    return "ok"


@klippy_endpoint("/printer/restart")
def restart(req: ApiRequest) -> str:
    """web_api.md "Host Restart"."""
    req.server.klippy.request("gcode/restart")
    return "ok"


@klippy_endpoint("/printer/firmware_restart")
def firmware_restart(req: ApiRequest) -> str:
    """web_api.md "Firmware Restart"."""
    req.server.klippy.request("gcode/firmware_restart")
    return "ok"


@klippy_endpoint("/printer/objects/list")
def objects_list(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List available printer objects"."""
    return req.server.klippy.request("objects/list")


@klippy_endpoint("/printer/objects/query")
def objects_query(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Query printer object status": ``{"eventtime", "status"}``."""
    return req.server.klippy.request("objects/query", {"objects": _objects_arg(req)})


@klippy_endpoint("/printer/objects/subscribe")
def objects_subscribe(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Subscribe to printer object status".  Over HTTP the
    ``connection_id`` of a live websocket names the subscriber."""
    conn = req.connection
    if req.transport == HTTP:
        uid = req.args.get_int("connection_id", None)
        conn = req.server.connections.get(uid) if uid is not None else None
        if conn is None:
            raise ApiError("No connection associated with subscription request", 400)
    elif conn is None:
        raise ApiError("Subscriptions need a persistent connection", 400)
    return req.server.klippy.subscribe(_objects_arg(req), conn)


@klippy_endpoint("/printer/query_endstops/status")
def query_endstops(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Query Endstops"."""
    return req.server.klippy.request("query_endstops/status")


@klippy_endpoint("/printer/gcode/script")
def gcode_script(req: ApiRequest) -> str:
    """web_api.md "Run a gcode": ``ok`` once Klippy has executed it."""
    if "script" not in req.args:
        raise ApiError("Missing Argument [script]", 400)
    script = req.args.get_str("script")
    req.server.data_store.record_command(script)
    req.server.klippy.request("gcode/script", {"script": script})
    return "ok"


@klippy_endpoint("/printer/gcode/help")
def gcode_help(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get GCode Help"."""
    return req.server.klippy.request("gcode/help")


@klippy_endpoint("/printer/print/start")
def print_start(req: ApiRequest) -> str:
    """web_api.md "Print a file": ``SDCARD_PRINT_FILE`` through Klippy."""
    filename = req.args.get_str("filename").lstrip("/")
    if not filename or '"' in filename or "\n" in filename:
        raise ApiError(f"Invalid filename: {filename}", 400)
    req.server.events.emit("printer:print_start_requested", filename, req.user)
    req.server.klippy.request("gcode/script", {"script": f'SDCARD_PRINT_FILE FILENAME="{filename}"'})
    return "ok"


@klippy_endpoint("/printer/print/pause")
def print_pause(req: ApiRequest) -> str:
    """web_api.md "Pause a print"."""
    req.server.klippy.request("pause_resume/pause")
    return "ok"


@klippy_endpoint("/printer/print/resume")
def print_resume(req: ApiRequest) -> str:
    """web_api.md "Resume a print"."""
    req.server.klippy.request("pause_resume/resume")
    return "ok"


@klippy_endpoint("/printer/print/cancel")
def print_cancel(req: ApiRequest) -> str:
    """web_api.md "Cancel a print"."""
    req.server.klippy.request("pause_resume/cancel")
    return "ok"
