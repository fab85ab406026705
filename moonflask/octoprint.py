"""The ``octoprint_compat`` component: enough of OctoPrint's REST API for a
slicer's "OctoPrint" upload (PrusaSlicer, SuperSlicer, Cura's OctoPrint
plugin) to work unchanged.  Spec: web_api.md "OctoPrint API emulation".

Options of ``[octoprint_compat]``: ``enable_ufp`` (advertise the Ultimaker
Format Package plugin so Cura uploads ``.ufp``), ``flip_h``, ``flip_v``,
``rotate_90``, ``stream_url``, ``webcam_enabled``.  Clients authenticate as
OctoPrint clients do, with the ``X-Api-Key`` header (handled by the
authorization policy).  Every route answers an unwrapped body.
"""
from __future__ import annotations

import logging
from typing import Any

import flask

from .api import HTTP, ApiBlueprint, ApiError, ApiRequest

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("octoprint_compat", __name__, component="octoprint_compat")

OCTO_SERVER_VERSION = "1.5.0"
OCTO_API_VERSION = "0.1"
HTTP_ONLY = frozenset({HTTP})


class OctoPrintCompat:
    """Settings of the emulation (see module docstring)."""

    def __init__(self, server: Any, config: Any) -> None:
        self.server = server
        self.enable_ufp = config.getboolean("enable_ufp", True)
        self.flip_h = config.getboolean("flip_h", False)
        self.flip_v = config.getboolean("flip_v", False)
        self.rotate_90 = config.getboolean("rotate_90", False)
        self.stream_url = config.get("stream_url", "/webcam/?action=stream")
        self.webcam_enabled = config.getboolean("webcam_enabled", True)

    # -- printer state ----------------------------------------------------------
    def _query(self, objects: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.server.klippy.request("objects/query", {"objects": objects},
                                              timeout=5.0).get("status", {})
        except ApiError:
            return {}

    def printer_state(self, temperatures: bool = True) -> tuple[str, dict[str, Any]]:
        """OctoPrint's state text and the temperatures of every heater."""
        klippy = self.server.klippy
        if klippy.state != "ready":
            text = "Error" if klippy.state in ("error", "shutdown") else "Offline"
            return text, {}
        heaters = self._query({"heaters": ["available_heaters"], "print_stats": ["state"]})
        names = (heaters.get("heaters") or {}).get("available_heaters") or []
        pstate = (heaters.get("print_stats") or {}).get("state", "standby")
        if not temperatures:
            names = []
        temps_raw = self._query({n: ["temperature", "target"] for n in names}) if names else {}
        temps: dict[str, Any] = {}
        tool = 0
        for name in names:
            data = temps_raw.get(name) or {}
            if name == "heater_bed":
                key = "bed"
            elif name.startswith("extruder"):
                key = f"tool{tool}"
                tool += 1
            else:
                key = name.split()[-1]
            temps[key] = {"actual": round(float(data.get("temperature", 0.0)), 2),
                          "offset": 0, "target": data.get("target", 0.0)}
        text = {"printing": "Printing", "paused": "Paused"}.get(pstate, "Operational")
        return text, temps

    def printer_status(self) -> dict[str, Any]:
        """``GET /api/printer``."""
        text, temps = self.printer_state()
        flags = {"operational": text in ("Operational", "Printing", "Paused"),
                 "paused": text == "Paused", "printing": text == "Printing",
                 "cancelling": False, "pausing": False, "error": text == "Error",
                 "ready": text == "Operational",
                 "closedOrError": text in ("Error", "Offline")}
        return {"temperature": temps, "state": {"text": text, "flags": flags}}


def load_component(server: Any, config: Any) -> OctoPrintCompat:
    """Create the component from ``[octoprint_compat]``."""
    return OctoPrintCompat(server, config)


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
    from .app import json_response
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
    """Run ``commands`` (a list of gcode lines) through Klippy; answers ``{}``."""
    commands = req.args.get("commands", [])
    if isinstance(commands, str):
        commands = [commands]
    if not isinstance(commands, list):
        raise ApiError("Invalid Argument Type [commands]", 400)
    script = "\n".join(str(c) for c in commands)
    if script:
        req.server.klippy.request("gcode/script", {"script": script})
    return {}


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
