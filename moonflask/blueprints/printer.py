"""Printer administration, status, G-code and print management endpoints.

Spec: web_api.md "Printer Administration", "Printer Status", "GCode APIs",
"Print Management".  Each handler is a thin call into :class:`moonflask.components.klippy_apis.Klippy`.
"""
from __future__ import annotations

from typing import Any

from ..api import HTTP, ApiBlueprint, ApiError, ApiRequest

blueprint = ApiBlueprint("printer", __name__, component="klippy_apis")


def klippy_endpoint(path: str):
    """Declare a Klippy-backed endpoint: like the reference, it answers both
    GET and POST under one JSON-RPC name derived from the path."""
    return blueprint.endpoint(path, ["GET", "POST"], rpc=path.strip("/").replace("/", "."))


def _from_query_string(req: ApiRequest, key: str) -> bool:
    """True when argument ``key`` is the plain text of the HTTP query string
    (``?objects=x``), not a JSON body value or a type-hinted one."""
    if req.transport != HTTP or req.http is None:
        return False
    value = req.args.get(key)
    return isinstance(value, str) and req.http.args.get(key) == value


def _objects_arg(req: ApiRequest, required: bool = True) -> dict[str, list[str] | None]:
    """The ``objects`` argument, checked before Klippy is asked (spec:
    web_api.md "Query printer object status").

    Forms accepted, as the reference accepts them:
    - ``objects``: a JSON object ``{name: [field, ...] | null}`` (every
      transport; a JSON body over HTTP);
    - over HTTP only, the query form ``?toolhead&extruder=target,temperature``
      (each argument an object, its text the comma-separated fields); a
      plain ``?objects=...`` there names an object called ``objects``.

    Args:
        required: without any objects, raise (query) or return ``{}``
            (subscribe: an empty subscription).
    Returns: ``{object_name: [fields] | None}``.
    Raises: ApiError 400 ``Missing Argument [objects]``, ``Invalid Argument
        Type [objects]`` (not an object), or one that names the object whose
        fields are not a list of names or null.
    """
    args = req.args
    if "objects" in args and not _from_query_string(req, "objects"):
        raw = args["objects"]
        if not isinstance(raw, dict):
            raise ApiError("Invalid Argument Type [objects]", 400)
    elif req.transport == HTTP:
        raw = {k: v for k, v in args.items() if k != "connection_id"}
        raw = {k: (v.split(",") if isinstance(v, str) and v else v or None)
               for k, v in raw.items()}
    elif required:
        raise ApiError("Missing Argument [objects]", 400)
    else:
        raw = {}
    objects: dict[str, list[str] | None] = {}
    for name, fields in raw.items():
        if fields is not None and (not isinstance(fields, list)
                                   or not all(isinstance(f, str) for f in fields)):
            raise ApiError(f"Invalid argument for object '{name}': expected a list of "
                           "field names or null", 400)
        objects[str(name)] = fields
    return objects


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
    return req.server.klippy.subscribe(_objects_arg(req, required=False), conn)


@klippy_endpoint("/printer/gcode/script")
def gcode_script(req: ApiRequest) -> str:
    """web_api.md "Run a gcode": ``ok`` once Klippy has executed it."""
    if "script" not in req.args:
        raise ApiError("Missing Argument [script]", 400)
    script = req.args["script"]
    if not isinstance(script, str):
        raise ApiError("Invalid Argument Type [script]", 400)
    req.server.data_store.record_command(script)
    req.server.klippy.request("gcode/script", {"script": script})
    return "ok"


@klippy_endpoint("/printer/print/start")
def print_start(req: ApiRequest) -> str:
    """web_api.md "Print a file": ``SDCARD_PRINT_FILE`` through Klippy."""
    filename = req.args.get_str("filename").lstrip("/")
    if not filename or '"' in filename or "\n" in filename:
        raise ApiError(f"Invalid filename: {filename}", 400)
    req.server.events.emit("printer:print_start_requested", filename, req.user)
    req.server.klippy.request("gcode/script", {"script": f'SDCARD_PRINT_FILE FILENAME="{filename}"'})
    return "ok"


# Endpoints that forward one Klippy request: (path, Klippy method, answers
# "ok" rather than Klippy's result, spec section in web_api.md).
PASS_THROUGH = (
    ("/printer/info", "info", False, "Get Klippy host information"),
    ("/printer/emergency_stop", "emergency_stop", True, "Emergency Stop"),
    ("/printer/restart", "gcode/restart", True, "Host Restart"),
    ("/printer/firmware_restart", "gcode/firmware_restart", True, "Firmware Restart"),
    ("/printer/objects/list", "objects/list", False, "List available printer objects"),
    ("/printer/query_endstops/status", "query_endstops/status", False, "Query Endstops"),
    ("/printer/gcode/help", "gcode/help", False, "Get GCode Help"),
    ("/printer/print/pause", "pause_resume/pause", True, "Pause a print"),
    ("/printer/print/resume", "pause_resume/resume", True, "Resume a print"),
    ("/printer/print/cancel", "pause_resume/cancel", True, "Cancel a print"),
)


def _pass_through(method: str, answers_ok: bool, section: str):
    def handler(req: ApiRequest) -> Any:
        result = req.server.klippy.request(method)
        return "ok" if answers_ok else result
    handler.__doc__ = f'web_api.md "{section}": Klippy\'s ``{method}``.'
    return handler


for _path, _method, _ok, _section in PASS_THROUGH:
    klippy_endpoint(_path)(_pass_through(_method, _ok, _section))
