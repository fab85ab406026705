"""A PanelDue display on a serial line (Moonraker's ``paneldue``
component).  Spec: configuration.md "[paneldue]" (PanelDue firmware 1.24);
the ``paneldue_beep`` Klippy remote method.

The PanelDue speaks RepRapFirmware's serial protocol: it sends G-code
lines, optionally numbered and checksummed (``N12 M408 S0*93``, the
checksum the XOR of every byte before ``*``), and expects JSON objects
back.  moonflask answers as the reference 0.11.0 does (recorded by
scripts/capture_paneldue.py into tests/reference/paneldue_*.json):

- ``M408`` (no S, or S1): the extended status (``myName``, ``firmwareName``
  ``Repetier | Klipper VERSION``, ``numTools``, ``geometry``, ``axes``);
  ``M408 S0|S2|S3``: the short one (``status`` letter: ``I`` idle, ``P``
  printing, ``D`` pausing or paused (as the reference), ``H`` halted (shutdown), ``O`` off
  (Klippy not ready); heaters, position, factors as floats;
  ``fraction_printed`` and ``timesLeft`` while printing), with any G-code
  response received since as ``resp`` (moonflask only);
- ``M20 S2 P"0:/gcodes/DIR"``: ``{"dir": "/gcodes/DIR", "files"}`` (folders
  first, prefixed ``*``); ``P"0:/macros"`` lists the first word of each of
  ``macros`` and ``confirmed_macros``; other ``S`` and missing folders: no reply;
- ``M36 FILE``: ``err`` 0/1, ``size``, ``lastModified`` (``T`` + ctime),
  ``generatedBy`` ...;
- ``M32 FILE``: starts the print; ``M98 P"0:/macros/NAME"`` runs the macro
  line whose first word is NAME (a confirmed macro is first answered with a
  ``msgBox.*`` object and runs when ``M292 P0`` accepts it, not on ``M292 P1``);
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
import time
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
        self._geometry: str | None = None
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
        if handler is not None and word in ("M32", "M36"):
            handler(params, quoted.group(1) if quoted else "", rest)
        elif handler is not None:
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
        # as the reference: no S (or S1) is the extended reply, S0/S2/S3... the short one
        self.write(self.status(params.get("S", "1") in ("1", "")))

    def _cmd_M20(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        # the reference answers only S2 (JSON) listings, and nothing for a
        # folder that does not exist
        if params.get("S", "0") != "2":
            log.info("paneldue: M20 S%s not supported", params.get("S", "0"))
            return
        reply = self.list_dir(params.get("P", "0:/gcodes"))
        if reply is not None:
            self.write(reply)

    def _cmd_M36(self, _params: dict[str, str], quoted: str,  # noqa: N802
                 rest: str = "") -> None:
        self.write(self.file_info(quoted or rest.strip().strip('"')))

    def _cmd_M32(self, _params: dict[str, str], quoted: str,  # noqa: N802
                 rest: str = "") -> None:
        try:
            self._call("printer.print.start",
                       {"filename": _gcode_path(quoted or rest.strip().strip('"'))})
        except ApiError as err:
            self.responses.append(f"!! {err.message}")

    def _cmd_M98(self, params: dict[str, str], _q: str) -> None:  # noqa: N802
        macro = params.get("P", "")
        if not macro.startswith("0:/macros/"):
            return
        name = macro[len("0:/macros/"):].strip()
        # as the reference: the panel names a macro by its first word, which
        # runs the whole configured line; a confirmed macro first asks
        confirmed = {line.split(None, 1)[0]: line for line in self.confirmed_macros
                     if line.strip()}
        plain = {line.split(None, 1)[0]: line for line in self.macros if line.strip()}
        if name in confirmed:
            self.msg_seq += 1
            self.pending_confirm = confirmed[name]
            self.write({"msgBox.mode": 3,
                        "msgBox.msg": f"Please confirm your intent to run {name}. "
                                      "Press OK to continue, or CANCEL to abort.",
                        "msgBox.seq": self.msg_seq, "msgBox.title": "Confirmation Dialog",
                        "msgBox.controls": 0, "msgBox.timeout": 0})
        elif name in plain:
            self._gcode(plain[name])
        else:
            log.info("paneldue: M98: macro %s invalid", name)

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
            letter = "D"        # the reference's letter for a paused print
        else:
            letter = "I"
        pos = gmove.get("gcode_position") or toolhead.get("position") or [0, 0, 0, 0]
        homed = toolhead.get("homed_axes", "")
        # keys and value types as the reference (tests/reference/paneldue_m408_*.json):
        # percentages and positions are floats
        out: dict[str, Any] = {
            "status": letter,
            "babystep": round(float((gmove.get("homing_origin") or [0, 0, 0])[2]), 3),
            "pos": [round(float(p), 2) for p in pos[:3]],
            "homed": [int(axis in homed) for axis in "xyz"],
            "sfactor": round(float(gmove.get("speed_factor", 1.0)) * 100, 2),
            "fanPercent": [round(float(st.get("fan", {}).get("speed", 0.0)) * 100, 2)],
            "tool": 0,
            "heaters": [round(float(bed.get("temperature", 0.0)), 1),
                        round(float(ext.get("temperature", 0.0)), 1)],
            "active": [float(bed.get("target", 0.0)), float(ext.get("target", 0.0))],
            "standby": [float(bed.get("target", 0.0)), float(ext.get("target", 0.0))],
            "hstat": [2 if bed.get("target") else 0, 2 if ext.get("target") else 0],
            "efactor": [round(float(gmove.get("extrude_factor", 1.0)) * 100, 2)],
            "extr": [round(float(pos[3]), 2) if len(pos) > 3 else 0.0],
        }
        if letter == "P" and st.get("pause_resume", {}).get("is_paused"):
            letter = out["status"] = "D"        # pausing
        if letter in ("P", "D"):
            progress = float(st.get("virtual_sdcard", {}).get("progress", 0.0) or 0.0)
            spent = float(pstats.get("print_duration", 0.0) or 0.0)
            out["fraction_printed"] = round(progress, 3)
            out["timesLeft"] = [int(spent / progress - spent) if progress > 0 else 0]
        if extended:
            version = self.server.klippy.info.get("software_version", "")
            out.update({"myName": self.machine_name,
                        "firmwareName": f"Repetier | Klipper {version}".rstrip(),
                        "numTools": 1, "geometry": self._kinematics(), "axes": 3})
        if self.responses:
            out["resp"] = "\n".join(self.responses)
            self.responses = []
        return out

    def _kinematics(self) -> str:
        """``[printer] kinematics`` from Klippy's configfile (cached)."""
        if self._geometry is None:
            try:
                got = self.server.klippy.request(
                    "objects/query", {"objects": {"configfile": ["settings"]}})
                settings = got["status"]["configfile"]["settings"]
                self._geometry = str(settings.get("printer", {}).get("kinematics",
                                                                     "cartesian"))
            except (ApiError, KeyError, TypeError):
                return "cartesian"
        return self._geometry

    def macro_names(self) -> list[str]:
        """The ``0:/macros`` listing: the first word of each configured macro
        (``macros`` then ``confirmed_macros``), each once, as the reference."""
        out: list[str] = []
        for line in self.macros + self.confirmed_macros:
            name = line.split(None, 1)[0] if line.strip() else ""
            if name and name not in out:
                out.append(name)
        return out

    def list_dir(self, path: str) -> dict[str, Any] | None:
        """The M20 S2 listing of ``0:/gcodes[/DIR]`` or ``0:/macros``:
        ``{"dir": path without its "0:", "files": ["*folder", ..., "file", ...]}``
        (folders first, every folder, each group sorted); None for a folder
        that does not exist (the reference then answers nothing)."""
        shown = path[2:] if path.startswith("0:") else path
        if shown.rstrip("/") == "/macros":
            return {"dir": shown, "files": self.macro_names()}
        rel = _gcode_path(path).rstrip("/")
        try:
            got = self._call("server.files.get_directory",
                             {"path": "gcodes/" + rel if rel else "gcodes"})
        except ApiError as err:
            log.info("paneldue: M20 %s: %s", path, err.message)
            return None
        files = ["*" + d["dirname"] for d in sorted(got.get("dirs", []),
                                                     key=lambda d: d["dirname"])]
        files += [f["filename"] for f in sorted(got.get("files", []),
                                                key=lambda f: f["filename"])]
        return {"dir": shown, "files": files}

    def file_info(self, name: str) -> dict[str, Any]:
        """The M36 reply for ``name`` (``0:/gcodes/...``, ``gcodes/...`` or
        relative): ``{"err": 0, "size", "lastModified": "T" + ctime,
        "generatedBy" (slicer or "Unknown")}`` plus ``height``,
        ``layerHeight``, ``printTime``, ``filament`` when the metadata has
        them; ``{"err": 1}`` for a missing file."""
        try:
            md = self._call("server.files.metadata", {"filename": _gcode_path(name)})
        except ApiError:
            return {"err": 1}
        out: dict[str, Any] = {"err": 0, "size": md.get("size", 0),
                               "lastModified": "T" + time.ctime(md.get("modified", 0)),
                               "generatedBy": md.get("slicer") or "Unknown"}
        for key, field in (("height", "object_height"), ("layerHeight", "layer_height"),
                           ("printTime", "estimated_time"), ("filament", "filament_total")):
            if md.get(field) is not None:
                out[key] = [md[field]] if key == "filament" else (
                    int(md[field]) if key == "printTime" else md[field])
        return out


def _gcode_path(name: str) -> str:
    """``0:/gcodes/a/b.gcode`` -> ``a/b.gcode`` (other names unchanged)."""
    for prefix in ("0:/gcodes/", "0:/gcodes", "/gcodes/", "gcodes/"):
        if name.startswith(prefix):
            return name[len(prefix):].lstrip("/")
    return name.lstrip("/")


def load_component(server: Any, section: Any) -> PanelDue:
    """Create the paneldue component from ``[paneldue]``."""
    return PanelDue(server, section)
