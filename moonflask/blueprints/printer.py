"""Printer administration, status, G-code and print management endpoints.

Spec: web_api.md "Printer Administration", "Printer Status", "GCode APIs",
"Print Management".  Each handler is a thin call into :class:`moonflask.klippy.Klippy`.
"""
from __future__ import annotations

from typing import Any

from ..api import HTTP, ApiBlueprint, ApiError, ApiRequest

blueprint = ApiBlueprint("printer", __name__, component="klippy_apis")


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
        raw = args.get_dict("objects")
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


@blueprint.endpoint("/printer/info", ["GET"])
def printer_info(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get Klippy host information": Klippy's ``info`` reply."""
    info = req.server.klippy.request("info", {})
    return info


@blueprint.endpoint("/printer/emergency_stop", ["POST"])
def emergency_stop(req: ApiRequest) -> str:
    """web_api.md "Emergency Stop"."""
    req.server.klippy.request("emergency_stop")
    return "ok"


@blueprint.endpoint("/printer/restart", ["POST"])
def restart(req: ApiRequest) -> str:
    """web_api.md "Host Restart"."""
    req.server.klippy.request("gcode/restart")
    return "ok"


@blueprint.endpoint("/printer/firmware_restart", ["POST"])
def firmware_restart(req: ApiRequest) -> str:
    """web_api.md "Firmware Restart"."""
    req.server.klippy.request("gcode/firmware_restart")
    return "ok"


@blueprint.endpoint("/printer/objects/list", ["GET"])
def objects_list(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List available printer objects"."""
    return req.server.klippy.request("objects/list")


@blueprint.endpoint("/printer/objects/query", ["GET", "POST"], rpc="printer.objects.query")
def objects_query(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Query printer object status": ``{"eventtime", "status"}``."""
    return req.server.klippy.request("objects/query", {"objects": _objects_arg(req)})


@blueprint.endpoint("/printer/objects/subscribe", ["GET", "POST"],
                    rpc="printer.objects.subscribe")
def objects_subscribe(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Subscribe to printer object status".  Over HTTP the
    ``connection_id`` of a live websocket names the subscriber."""
    conn = req.connection
    if req.transport == HTTP:
        uid = req.args.get_int("connection_id")
        conn = req.server.connections.get(uid)
        if conn is None:
            raise ApiError(f"No connection associated with ID: {uid}", 404)
    elif conn is None:
        raise ApiError("Subscriptions need a persistent connection", 400)
    return req.server.klippy.subscribe(_objects_arg(req), conn)


@blueprint.endpoint("/printer/query_endstops/status", ["GET"])
def query_endstops(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Query Endstops"."""
    return req.server.klippy.request("query_endstops/status")


@blueprint.endpoint("/printer/gcode/script", ["POST"])
def gcode_script(req: ApiRequest) -> str:
    """web_api.md "Run a gcode": ``ok`` once Klippy has executed it."""
    script = req.args.get_str("script")
    req.server.data_store.record_command(script)
    req.server.klippy.request("gcode/script", {"script": script})
    return "ok"


@blueprint.endpoint("/printer/gcode/help", ["GET"])
def gcode_help(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get GCode Help"."""
    return req.server.klippy.request("gcode/help")


@blueprint.endpoint("/printer/print/start", ["POST"])
def print_start(req: ApiRequest) -> str:
    """web_api.md "Print a file": ``SDCARD_PRINT_FILE`` through Klippy."""
    filename = req.args.get_str("filename").lstrip("/")
    if not filename or '"' in filename or "\n" in filename:
        raise ApiError(f"Invalid filename: {filename}", 400)
    req.server.events.emit("printer:print_start_requested", filename)
    req.server.klippy.request("gcode/script", {"script": f'SDCARD_PRINT_FILE FILENAME="{filename}"'})
    return "ok"


@blueprint.endpoint("/printer/print/pause", ["POST"])
def print_pause(req: ApiRequest) -> str:
    """web_api.md "Pause a print"."""
    req.server.klippy.request("pause_resume/pause")
    return "ok"


@blueprint.endpoint("/printer/print/resume", ["POST"])
def print_resume(req: ApiRequest) -> str:
    """web_api.md "Resume a print"."""
    req.server.klippy.request("pause_resume/resume")
    return "ok"


@blueprint.endpoint("/printer/print/cancel", ["POST"])
def print_cancel(req: ApiRequest) -> str:
    """web_api.md "Cancel a print"."""
    req.server.klippy.request("pause_resume/cancel")
    return "ok"
