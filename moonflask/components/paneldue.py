"""A PanelDue display on a serial line (Moonraker's ``paneldue``
component).  Spec: configuration.md "[paneldue]" (PanelDue firmware 1.24);
the ``paneldue_beep`` Klippy remote method.

The PanelDue speaks RepRapFirmware's serial protocol: it sends G-code
lines, optionally numbered and checksummed (``N12 M408 S0*93``, the
checksum the XOR of every byte before ``*``), and expects JSON objects
back.  moonflask answers:

- ``M408 S0|S1``: the status object (``status`` letter: ``I`` idle, ``P``
  printing, ``S`` paused, ``H`` halted (shutdown), ``O`` off (Klippy not
  ready); heaters, position,
  fans, ``fraction_printed`` ...; S1 adds ``myName``, ``firmwareName`` and
  the geometry), with any G-code response received since as ``resp``;
- ``M20 S2 P"0:/gcodes/DIR"``: ``{"dir", "first", "files", "next"}``
  (folders prefixed ``*``); ``P"0:/macros"`` lists ``macros`` and
  ``confirmed_macros``;
- ``M36 "FILE"``: the file's metadata (``err`` 0/1, ``size``, ``height`` ...);
- ``M32 "FILE"``: starts the print; ``M98 P"0:/macros/NAME"`` runs a macro
  (a confirmed macro is first shown as a message box, ``msgBox.*`` in the
  next M408 reply, and runs when ``M292 P0`` accepts it, not on ``M292 P1``);
  ``M24``/``M25``/``M0``/``M1``: resume/pause/cancel; ``M290 Z``:
  babystepping; ``M999``: FIRMWARE_RESTART; ``G10 P0 S T``: tool
  temperature; everything else is sent to Klippy as G-code.

File and print operations go through moonflask's own JSON-RPC methods
(``server.jsonrpc``).  The serial read loop is ``moonflask/workers/paneldue.py``.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

import gevent
import gevent.lock

from ..api import INTERNAL, ApiError

log = logging.getLogger(__name__)


STATUS_OBJECTS = {"toolhead", "gcode_move", "extruder", "heater_bed", "fan", "print_stats",
                  "virtual_sdcard", "pause_resume", "webhooks"}
_LINE_RE = re.compile(r"^N(\d+)\s+(.*)$")
_QUOTED_RE = re.compile(r'"([^"]*)"')
_PARAM_RE = re.compile(r"([A-Z])(\"[^\"]*\"|\S*)")
RESP_LIMIT = 20     # G-code responses kept for the next M408
CALL_TIMEOUT = 5.0  # seconds for a file or print request made for the panel


def checksum(text: str) -> int:
    """RepRapFirmware's line checksum: XOR of the bytes."""
    value = 0
    for byte in text.encode():
        value ^= byte
    return value


def parse_line(raw: str) -> str | None:
    """The command of one received line without its number and checksum;
    None when the checksum does not match (the line is dropped)."""
    line = raw.strip()
    if "*" in line:
        body, _, check = line.rpartition("*")
        try:
            if int(check) != checksum(body):
                return None
        except ValueError:
            return None
        line = body
    m = _LINE_RE.match(line)
    return (m.group(2) if m else line).strip()


class PanelDue:
    """The paneldue component.

    Config: ``serial`` (required), ``baud`` (57600), ``machine_name``
    (``Klipper``), ``macros``, ``confirmed_macros`` (RESTART,
    FIRMWARE_RESTART).
    """

    def __init__(self, server: Any, section: Any) -> None:
        self.server = server
        self.port = section.get("serial")
        self.baud = section.getint("baud", 57600, minval=1)
        self.machine_name = section.get("machine_name", "Klipper")
        self.macros = section.getlist("macros", [])
        self.confirmed_macros = section.getlist("confirmed_macros",
                                                ["RESTART", "FIRMWARE_RESTART"])
        self.responses: list[str] = []
        self.pending_confirm: str | None = None
        self.msg_seq = 0
        self.ser: Any = None
        self._write_lock = gevent.lock.Semaphore()
        self._gcode_lock = gevent.lock.Semaphore()
        server.klippy.add_internal_subscription("paneldue", STATUS_OBJECTS)
        server.events.on("klippy:gcode_response", self._on_gcode_response)
        server.events.on("server:started", self._on_started)
        server.events.on("server:shutdown", self.close)
        server.klippy.register_remote_method("paneldue_beep", self._remote_beep)

    # -- serial --------------------------------------------------------------
    def _on_started(self) -> None:
        from ..workers.paneldue import run
        self.server.workers.start("paneldue", run, self)

    def open(self) -> Any:
        """Open the serial port (raises serial.SerialException / OSError)."""
        import serial
        self.ser = serial.Serial(self.port, self.baud, timeout=0, write_timeout=2.0)
        return self.ser

    def close(self) -> None:
        """Close the serial port."""
        ser, self.ser = self.ser, None
        if ser is not None:
            try:
                ser.close()
            except OSError:
                pass

    def write(self, obj: dict[str, Any]) -> None:
        """Send one JSON object (newline-terminated) to the panel."""
        ser = self.ser
        if ser is None:
            return
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        with self._write_lock:
            ser.write(data)

    # -- Klippy -----------------------------------------------------------------
    def _on_gcode_response(self, text: str) -> None:
        self.responses.append(text)
        del self.responses[:-RESP_LIMIT]

    def _remote_beep(self, frequency: int = 300, duration: float = 1.0, **_kw: Any) -> None:
        self.write({"beep_freq": int(frequency), "beep_length": int(float(duration) * 1000)})

    def _gcode(self, script: str) -> None:
        # Run in order, but in the background: the panel keeps polling M408
        # while a long move runs.
        def run() -> None:
            with self._gcode_lock:
                try:
                    self.server.klippy.request("gcode/script", {"script": script})
                except ApiError as err:
                    self.responses.append(f"!! {err.message}")
        gevent.spawn(run)

    def _call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call a JSON-RPC method, bounded by CALL_TIMEOUT (ApiError 504)."""
        try:
            with gevent.Timeout(CALL_TIMEOUT):
                return self.server.jsonrpc.call(method, params or {}, transport=INTERNAL)
        except gevent.Timeout:
            raise ApiError(f"{method} timed out", 504) from None

    # -- commands ----------------------------------------------------------------
    def handle_line(self, raw: str) -> None:
        """Process one line from the panel (see the module docstring)."""
        cmd = parse_line(raw)
        if not cmd:
            return
        word = cmd.split(None, 1)[0].upper()
        rest = cmd[len(word):].strip()
        params = {k: v.strip('"') for k, v in _PARAM_RE.findall(rest)}
        quoted = _QUOTED_RE.search(rest)
        handler = getattr(self, f"_cmd_{word}", None)
        if handler is not None:
            handler(params, quoted.group(1) if quoted else "")
        elif word in ("M24", "M25", "M0", "M1"):
            method = {"M24": "printer.print.resume", "M25": "printer.print.pause"}.get(
                word, "printer.print.cancel")
            try:
                self._call(method)
            except ApiError as err:
                self.responses.append(f"!! {err.message}")
        else:
            self._gcode(cmd)

    def _cmd_M408(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        self.write(self.status(params.get("S", "0") == "1"))

    def _cmd_M20(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        path = params.get("P", "0:/gcodes").rstrip("/")
        self.write(self.list_dir(path))

    def _cmd_M36(self, _params: dict[str, str], quoted: str) -> None:  # noqa: N802
        self.write(self.file_info(quoted))

    def _cmd_M32(self, _params: dict[str, str], quoted: str) -> None:  # noqa: N802
        try:
            self._call("printer.print.start", {"filename": _gcode_path(quoted)})
        except ApiError as err:
            self.responses.append(f"!! {err.message}")

    def _cmd_M98(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        macro = params.get("P", "")
        if not macro.startswith("0:/macros/"):
            return
        macro = macro[len("0:/macros/"):]
        if macro in self.confirmed_macros:
            # shown as a message box in the next M408 reply; M292 answers it
            self.msg_seq += 1
            self.pending_confirm = macro
            return
        self._gcode(macro)

    def _cmd_M292(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        macro, self.pending_confirm = self.pending_confirm, None
        if macro is not None and params.get("P", "0") == "0":
            self._gcode(macro)

    def _cmd_M290(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        if "Z" in params:
            self._gcode(f"SET_GCODE_OFFSET Z_ADJUST={params['Z']} MOVE=1")

    def _cmd_M999(self, _params: dict[str, str], _q: str) -> None:  # noqa: N802
        try:
            self.server.klippy.request("gcode/firmware_restart")
        except ApiError as err:
            self.responses.append(f"!! {err.message}")

    def _cmd_G10(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        if "S" in params:
            self._gcode(f"M104 S{params['S']}")

    # -- replies -------------------------------------------------------------
    def status(self, extended: bool) -> dict[str, Any]:
        """The M408 status object from Klippy's status cache."""
        klippy = self.server.klippy
        st = klippy.status
        ext = st.get("extruder", {})
        bed = st.get("heater_bed", {})
        toolhead = st.get("toolhead", {})
        gmove = st.get("gcode_move", {})
        pstats = st.get("print_stats", {})
        if klippy.state == "shutdown":
            letter = "H"
        elif klippy.state != "ready":
            letter = "O"
        elif pstats.get("state") == "printing":
            letter = "P"
        elif pstats.get("state") == "paused":
            letter = "S"
        else:
            letter = "I"
        pos = gmove.get("gcode_position") or toolhead.get("position") or [0, 0, 0, 0]
        homed = toolhead.get("homed_axes", "")
        out: dict[str, Any] = {
            "status": letter,
            "heaters": [bed.get("temperature", 0.0), ext.get("temperature", 0.0)],
            "active": [bed.get("target", 0.0), ext.get("target", 0.0)],
            "standby": [bed.get("target", 0.0), ext.get("target", 0.0)],
            "hstat": [2 if bed.get("target") else 0, 2 if ext.get("target") else 0],
            "pos": [round(p, 2) for p in pos[:3]],
            "extr": [round(pos[3], 2) if len(pos) > 3 else 0.0],
            "sfactor": round(gmove.get("speed_factor", 1.0) * 100),
            "efactor": [round(gmove.get("extrude_factor", 1.0) * 100)],
            "babystep": round((gmove.get("homing_origin") or [0, 0, 0])[2], 3),
            "tool": 0, "probe": "0",
            "fanPercent": [round(st.get("fan", {}).get("speed", 0.0) * 100)],
            "fanRPM": 0,
            "homed": [int(axis in homed) for axis in "xyz"],
            "fraction_printed": round(st.get("virtual_sdcard", {}).get("progress", 0.0), 3),
        }
        if extended:
            out.update({"myName": self.machine_name, "firmwareName": "Klipper",
                        "geometry": "cartesian", "axes": 3, "volumes": 1, "numTools": 1})
        if self.pending_confirm is not None:
            out.update({"msgBox.mode": 3, "msgBox.title": "Confirmation",
                        "msgBox.msg": f"Run {self.pending_confirm}?",
                        "msgBox.seq": self.msg_seq, "msgBox.timeout": 0,
                        "msgBox.controls": 0})
        if self.responses:
            out["resp"] = "\n".join(self.responses)
            self.responses = []
        return out

    def list_dir(self, path: str) -> dict[str, Any]:
        """The M20 S2 listing of ``0:/gcodes[/DIR]`` or ``0:/macros``."""
        if path == "0:/macros":
            return {"dir": path, "first": 0, "files": self.macros + self.confirmed_macros,
                    "next": 0}
        rel = _gcode_path(path)
        try:
            got = self._call("server.files.get_directory",
                             {"path": "gcodes/" + rel if rel else "gcodes"})
        except ApiError:
            return {"dir": path, "err": 1}
        files = ["*" + d["dirname"] for d in got.get("dirs", [])
                 if not d["dirname"].startswith(".")]
        files += [f["filename"] for f in got.get("files", [])]
        return {"dir": path, "first": 0, "files": files, "next": 0}

    def file_info(self, name: str) -> dict[str, Any]:
        """The M36 reply for ``name`` (``0:/gcodes/...`` or relative)."""
        try:
            md = self._call("server.files.metadata", {"filename": _gcode_path(name)})
        except ApiError:
            return {"err": 1}
        return {"err": 0, "size": md.get("size", 0),
                "lastModified": md.get("modified", 0),
                "height": md.get("object_height", 0.0),
                "layerHeight": md.get("layer_height", 0.0),
                "printTime": int(md.get("estimated_time") or 0),
                "filament": [md.get("filament_total", 0.0)],
                "generatedBy": md.get("slicer", "")}


def _gcode_path(name: str) -> str:
    """``0:/gcodes/a/b.gcode`` -> ``a/b.gcode`` (other names unchanged)."""
    for prefix in ("0:/gcodes/", "0:/gcodes", "/gcodes/"):
        if name.startswith(prefix):
            return name[len(prefix):].lstrip("/")
    return name.lstrip("/")


def load_component(server: Any, section: Any) -> PanelDue:
    """Create the paneldue component from ``[paneldue]``."""
    return PanelDue(server, section)
