"""Endpoints of the octoprint API group.  Spec: web_api.md "OctoPrint API emulation" (``[octoprint_compat]``).

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any

import flask

from ..api import HTTP, ApiBlueprint, ApiError, ApiRequest, json_response
from ..components.octoprint_compat import OCTO_API_VERSION, OCTO_SERVER_VERSION, OctoPrintCompat

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("octoprint", __name__)

HTTP_ONLY = frozenset({HTTP})


def _oc(req: ApiRequest) -> OctoPrintCompat:
    return req.server.components["octoprint_compat"]


def _endpoint(path: str, methods: list[str], **kw: Any):
    return blueprint.endpoint(path, methods, rpc="", transports=HTTP_ONLY, wrap=False, **kw)


@_endpoint("/api/version", ["GET"])
def api_version(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's version probe (the first request of every slicer)."""
    version = str(req.server.version).lstrip("v")
    return {"server": OCTO_SERVER_VERSION, "api": OCTO_API_VERSION,
            "text": f"OctoPrint (Moonraker {version})"}


@_endpoint("/api/server", ["GET"])
def api_server(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's server status."""
    return {"server": OCTO_SERVER_VERSION, "safemode": None}


@_endpoint("/api/login", ["POST"])
def api_login(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's login check: a fixed admin API-key user (GET is 405)."""
    return {"_is_external_client": False, "_login_mechanism": "apikey", "name": "_api",
            "active": True, "user": True, "admin": True, "apikey": None,
            "permissions": [], "groups": ["admins", "users"]}


@_endpoint("/api/settings", ["GET"])
def api_settings(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's settings: the UFP plugin (so Cura uploads .ufp) and webcam."""
    oc = _oc(req)
    plugins: dict[str, Any] = {}
    if oc.enable_ufp:
        plugins["UltimakerFormatPackage"] = {
            "align_inline_thumbnail": False, "inline_thumbnail": False,
            "inline_thumbnail_align_value": "left", "inline_thumbnail_scale_value": "50",
            "installed": True, "installed_version": "0.2.2",
            "scale_inline_thumbnail": False, "state_panel_thumbnail": True}
    return {"plugins": plugins,
            "feature": {"sdSupport": False, "temperatureGraph": False},
            "webcam": {"flipH": oc.flip_h, "flipV": oc.flip_v, "rotate90": oc.rotate_90,
                       "streamUrl": oc.stream_url, "webcamEnabled": oc.webcam_enabled}}


@_endpoint("/api/files/local", ["POST"])
def api_files_local(req: ApiRequest) -> flask.Response:
    """OctoPrint's upload: the multipart form of ``/server/files/upload``
    (``file``, ``path``, ``print``; ``select`` accepted), always to ``gcodes``.
    Answers 201 with the same body as ``/server/files/upload`` (as Moonraker
    does; slicers only look at the status)."""
    fm = req.server.lookup_component("file_manager")
    result = fm.handle_upload(req.http, default_root="gcodes")
    result.pop("_fields", None)
    return json_response(result, 201)


@_endpoint("/api/job", ["GET"])
def api_job(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's job status (a stub, as in Moonraker; ``state`` is the
    printer's)."""
    state, _temps = _oc(req).printer_state(temperatures=False)
    return {"job": {"file": {"name": None}, "estimatedPrintTime": None,
                    "filament": {"length": None}, "user": None},
            "progress": {"completion": None, "filepos": None, "printTime": None,
                         "printTimeLeft": None, "printTimeOrigin": None},
            "state": state}


@_endpoint("/api/printer", ["GET"])
def api_printer(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's printer status: heaters and state flags from Klippy."""
    return _oc(req).printer_status()


@_endpoint("/api/printer/command", ["POST"])
def api_printer_command(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's "Send an arbitrary command to the printer": ``command`` (one
    gcode line) or ``commands`` (a list of them), run through Klippy;
    answers ``{}`` (as Moonraker does).  Raises: 400 when neither is given or
    a command is not text (OctoPrint's ``script`` form is not supported)."""
    args = req.args
    if "commands" in args:
        commands = args["commands"]
        if isinstance(commands, str):
            commands = [commands]
    elif "command" in args:
        commands = [args["command"]]
    elif "script" in args:
        raise ApiError("GCODE scripts ('script') are not supported: send 'command' or "
                       "'commands'", 400)
    else:
        raise ApiError("Missing Argument [command] or [commands]", 400)
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise ApiError("Invalid Argument Type [commands]: expected a list of gcode lines", 400)
    script = "\n".join(c for c in commands if c.strip())
    if script:
        req.server.klippy.request("gcode/script", {"script": script})
    return {}


def _no_content() -> flask.Response:
    """OctoPrint's answer to a successful tool/bed command: 204, no body."""
    return flask.Response(status=204)


@_endpoint("/api/printer/tool", ["POST"])
def api_printer_tool(req: ApiRequest) -> flask.Response:
    """OctoPrint's "Issue a tool command": ``{"command": "target", "targets":
    {"tool0": 200, ...}}`` sets each extruder's target (degrees Celsius)
    through Klippy; 204.  Raises: 400 unknown command, bad tool or target;
    409 when the printer is not operational."""
    command = req.args.get("command")
    if command != "target":
        raise ApiError(f"Unsupported tool command: {command!r} (supported: 'target')", 400)
    targets = req.args.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise ApiError("Invalid Argument Type [targets]: expected an object "
                       "{\"tool0\": temperature, ...}", 400)
    _oc(req).set_targets({str(k): v for k, v in targets.items()})
    return _no_content()


@_endpoint("/api/printer/bed", ["POST"])
def api_printer_bed(req: ApiRequest) -> flask.Response:
    """OctoPrint's "Issue a bed command": ``{"command": "target", "target":
    60}`` sets the bed's target (degrees Celsius) through Klippy; 204.
    Raises: 400 unknown command or bad target; 409 when the printer is not
    operational or has no heated bed."""
    command = req.args.get("command")
    if command != "target":
        raise ApiError(f"Unsupported bed command: {command!r} (supported: 'target')", 400)
    if "target" not in req.args:
        raise ApiError("Missing Argument [target]", 400)
    _oc(req).set_targets({"bed": req.args["target"]})
    return _no_content()


@_endpoint("/api/printerprofiles", ["GET"])
def api_printerprofiles(req: ApiRequest) -> dict[str, Any]:
    """OctoPrint's printer profiles: one default profile."""
    return {"profiles": {"_default": {
        "id": "_default", "name": "Default", "color": "default", "model": "Default",
        "default": True, "current": True, "heatedBed": True, "heatedChamber": False,
        "axes": {"x": {"speed": 6000.0, "inverted": False},
                 "y": {"speed": 6000.0, "inverted": False},
                 "z": {"speed": 6000.0, "inverted": False},
                 "e": {"speed": 300.0, "inverted": False}}}}}
