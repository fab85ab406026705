"""The ``octoprint_compat`` component: enough of OctoPrint's REST API for a
slicer's "OctoPrint" upload (PrusaSlicer, SuperSlicer, Cura's OctoPrint
plugin) to work unchanged.  Spec: web_api.md "OctoPrint API emulation".

Options of ``[octoprint_compat]``: ``enable_ufp`` (advertise the Ultimaker
Format Package plugin so Cura uploads ``.ufp``), ``flip_h``, ``flip_v``,
``rotate_90``, ``stream_url``, ``webcam_enabled``.  Clients authenticate as
OctoPrint clients do, with the ``X-Api-Key`` header (handled by the
authorization policy).  Every route answers an unwrapped body.  Beyond the
reference, ``POST /api/printer/tool`` and ``/api/printer/bed`` (OctoPrint's
``target`` command, used by Home Assistant) set heater targets through Klippy.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import ApiError

log = logging.getLogger(__name__)


OCTO_SERVER_VERSION = "1.5.0"
OCTO_API_VERSION = "0.1"


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


    # -- temperatures -------------------------------------------------------------
    def heater_for(self, key: str, available: list[str]) -> str:
        """Klipper's heater for OctoPrint's ``bed`` / ``toolN`` (the N-th
        extruder: ``extruder``, ``extruder1``, ...), as ``GET /api/printer``
        names them.  Raises: ApiError 400 for an unknown tool, 409 when the
        printer has no such heater (OctoPrint's status for a missing bed)."""
        if key == "bed":
            if "heater_bed" not in available:
                raise ApiError("The printer has no heated bed", 409)
            return "heater_bed"
        extruders = [n for n in available if n.startswith("extruder")]
        if key.startswith("tool") and key[4:].isdigit() and int(key[4:]) < len(extruders):
            return extruders[int(key[4:])]
        raise ApiError(f"Invalid tool: {key!r} (this printer has "
                       f"{', '.join(f'tool{i}' for i in range(len(extruders))) or 'none'})", 400)

    def set_targets(self, targets: dict[str, Any]) -> None:
        """Set heater targets (``POST /api/printer/tool|bed``, OctoPrint's
        ``target`` command) with ``SET_HEATER_TEMPERATURE``, one script.

        Args:
            targets: ``{"bed" | "toolN": degrees Celsius}``, each a number >= 0.
        Raises: ApiError 400 (bad key or value, or Klippy refuses the
            temperature, with its message), 409 (printer not operational or
            heater missing), 503 (Klippy not connected).  Every key and
            value is checked before anything is sent to Klippy.
        """
        for key, value in targets.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or value != value or value < 0:
                raise ApiError(f"Invalid target for {key}: {value!r} (expected a number of "
                               "degrees >= 0)", 400)
        klippy = self.server.klippy
        if klippy.state != "ready":
            raise ApiError("Printer is not operational", 409)
        status = klippy.request("objects/query", {"objects": {"heaters": ["available_heaters"]}},
                                timeout=5.0).get("status", {})
        available = (status.get("heaters") or {}).get("available_heaters") or []
        lines = [f"SET_HEATER_TEMPERATURE HEATER={self.heater_for(key, available)} "
                 f"TARGET={float(value):g}" for key, value in targets.items()]
        klippy.request("gcode/script", {"script": "\n".join(lines)})


def load_component(server: Any, config: Any) -> OctoPrintCompat:
    """Create the component from ``[octoprint_compat]``."""
    return OctoPrintCompat(server, config)
