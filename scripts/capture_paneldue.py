#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's ``[paneldue]`` replies into
tests/reference/paneldue_*.json.

The reference runs against the simulated printer with ``[paneldue]`` on a
pseudo-terminal; this script plays the PanelDue on the master end (the
numbered, checksummed lines of tests/test_paneldue.py's :class:`Panel`) and
records, per exchange, every line the reference wrote back within a window:
``{"name", "transport": "serial", "request": [lines sent], "replies":
[parsed JSON, or {"raw": text}]}``.  tests/test_paneldue.py compares
moonflask's replies with these.

    .venv/bin/python scripts/capture_paneldue.py [--reference-python PY] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import select
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "tests", "data"))
import capture_reference as cr  # noqa: E402
from long_gcode import write_long_gcode  # noqa: E402
import sim_printer  # noqa: E402
from test_paneldue import MACROS, PANEL_CONF, Panel  # noqa: E402

PREFIX = "paneldue_"


def collect(panel: Panel, window: float) -> list:
    """Every line read within ``window`` seconds, parsed as JSON when it parses."""
    out = []
    deadline = time.monotonic() + window
    while True:
        while b"\n" in panel.buf:
            line, _, panel.buf = panel.buf.partition(b"\n")
            text = line.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                out.append(json.loads(text))
            except ValueError:
                out.append({"raw": text})
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        ready, _, _ = select.select([panel.master], [], [], left)
        if ready:
            panel.buf += os.read(panel.master, 65536)


class Recorder:
    def __init__(self, out_dir: str, panel: Panel) -> None:
        self.out_dir = out_dir
        self.panel = panel

    def x(self, name: str, *cmds: str, window: float = 1.5, bad: bool = False) -> list:
        """Send ``cmds`` (the first with a bad checksum when ``bad``), record the replies."""
        collect(self.panel, 0.05)            # drop stale lines
        for i, cmd in enumerate(cmds):
            self.panel.send(cmd, good=not (bad and i == 0))
        replies = collect(self.panel, window)
        doc = {"name": PREFIX + name, "transport": "serial", "request": list(cmds),
               "bad_checksum_first": bad, "replies": replies}
        with open(os.path.join(self.out_dir, PREFIX + name + ".json"), "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        print("%-40s %s" % (name, json.dumps(replies)[:200]), flush=True)
        return replies

    def poll(self, name: str, pred, timeout: float = 20.0) -> list:
        """``M408 S0`` until ``pred(reply)``; records the last exchange."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.x(name, "M408 S0", window=0.6)
            js = [m for m in r if "status" in m]
            if (js and pred(js[-1])) or time.monotonic() > deadline:
                return r
            time.sleep(0.2)


def steps(rec: Recorder, cap) -> None:
    rec.x("m408_s1_idle", "M408 S1")
    rec.x("m408_s0_idle", "M408 S0")
    rec.x("m408_s2_idle", "M408 S2")
    rec.x("m408_s3", "M408 S3")
    rec.x("m408_no_s", "M408")
    rec.x("bad_checksum_then_macros", "M408 S0", 'M20 S2 P"0:/macros"', bad=True)
    rec.x("m20_macros", 'M20 S2 P"0:/macros"')
    rec.x("m20_macros_s0", 'M20 S0 P"0:/macros"')
    rec.x("g28", "G28", window=0.5)
    rec.poll("m408_s0_homed", lambda s: s.get("homed") == [1, 1, 1])
    rec.x("m408_s1_homed", "M408 S1")
    rec.x("g10", "G10 P0 S45", window=0.5)
    rec.poll("m408_s0_after_g10", lambda s: (s.get("active") or [0, 0])[1:2] == [45.0], 8)
    rec.x("m104_s0", "M104 S0", window=0.5)
    rec.x("m290", "M290 Z0.05", window=0.5)
    rec.poll("m408_s0_after_m290", lambda s: s.get("babystep") == 0.05, 8)
    rec.x("m98_macro", 'M98 P"0:/macros/M118 from_panel"', window=1.0)
    rec.poll("m408_s0_after_macro", lambda s: "from_panel" in s.get("resp", ""), 8)
    rec.x("m98_confirmed", 'M98 P"0:/macros/M118 confirmed_run"', window=1.0)
    rec.x("m408_s0_msgbox", "M408 S0")
    rec.x("m292_p1", "M292 P1", window=1.0)
    rec.x("m408_s0_after_m292_p1", "M408 S0")
    rec.x("m98_confirmed_again", 'M98 P"0:/macros/M118 confirmed_run"', window=1.0)
    rec.x("m408_s0_msgbox_again", "M408 S0")
    rec.x("m292_p0", "M292 P0", window=1.0)
    rec.poll("m408_s0_after_m292_p0", lambda s: "confirmed_run" in s.get("resp", ""), 8)
    rec.x("m20_gcodes", 'M20 S2 P"0:/gcodes/"')
    rec.x("m20_gcodes_noslash", 'M20 S2 P"0:/gcodes"')
    rec.x("m20_sub", 'M20 S2 P"0:/gcodes/sub"')
    rec.x("m20_missing_dir", 'M20 S2 P"0:/gcodes/nope"')
    rec.x("m36_small", 'M36 "0:/gcodes/small.gcode"')
    rec.x("m36_long", 'M36 "0:/gcodes/long.gcode"')
    rec.x("m36_none", 'M36 "0:/gcodes/none.gcode"')
    rec.x("m36_no_arg", "M36")
    rec.x("m32_long", 'M32 "0:/gcodes/long.gcode"', window=1.0)
    rec.poll("m408_s0_printing", lambda s: s.get("status") == "P", 30)
    rec.x("m408_s1_printing", "M408 S1")
    rec.x("m408_s2_printing", "M408 S2")
    rec.x("m25_pause", "M25", window=1.0)
    rec.poll("m408_s0_paused", lambda s: s.get("status") in ("A", "S", "D"), 15)
    rec.x("m24_resume", "M24", window=1.0)
    rec.poll("m408_s0_resumed", lambda s: s.get("status") == "P", 15)
    rec.x("m0_cancel", "M0", window=1.0)
    rec.poll("m408_s0_cancelled", lambda s: s.get("status") == "I", 30)
    # the forms the reference accepts: a macro by its name, paths unquoted
    rec.x("m98_macro_name", 'M98 P"0:/macros/M118"', window=1.0)
    rec.x("m408_s0_after_macro_name", "M408 S0")
    rec.x("m408_s0_after_macro_name_2", "M408 S0", window=1.0)
    rec.x("m292_p0_2", "M292 P0", window=1.0)
    rec.x("m408_s0_after_m292_p0_2", "M408 S0", window=1.0)
    rec.x("m98_beep_macro", 'M98 P"0:/macros/PANELDUE_BEEP"', window=1.5)
    rec.x("m408_s0_after_beep_macro", "M408 S0", window=1.0)
    rec.x("m36_small_unquoted", "M36 0:/gcodes/small.gcode")
    rec.x("m36_small_plain", "M36 small.gcode")
    rec.x("m36_small_gcodes", "M36 gcodes/small.gcode")
    rec.x("m36_sub_none_unquoted", "M36 0:/gcodes/none.gcode")
    rec.x("m32_long_unquoted", "M32 0:/gcodes/long.gcode", window=1.0)
    rec.poll("m408_s0_printing_2", lambda s: s.get("status") == "P", 30)
    rec.x("m408_s1_printing_2", "M408 S1")
    rec.x("m408_s2_printing_2", "M408 S2")
    rec.x("m25_pause_2", "M25", window=1.0)
    rec.poll("m408_s0_paused_2", lambda s: s.get("status") in ("A", "S", "D"), 15)
    rec.x("m24_resume_2", "M24", window=1.0)
    rec.poll("m408_s0_resumed_2", lambda s: s.get("status") == "P", 15)
    rec.x("m0_cancel_2", "M0", window=1.0)
    rec.poll("m408_s0_cancelled_2", lambda s: s.get("status") == "I", 30)
    rec.x("unknown_gcode", "G4242", window=1.0)
    rec.poll("m408_s0_after_unknown", lambda s: "resp" in s, 5)
    cap.http_raw("POST", "/printer/gcode/script?script=PANELDUE_BEEP%20FREQUENCY=500"
                         "%20DURATION=0.5")
    rec.x("beep_remote_method", window=1.5)
    rec.x("m408_s0_after_beep", "M408 S0", window=1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mfpdue-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    gcodes = os.path.join(data, "gcodes")
    os.makedirs(os.path.join(gcodes, "sub"), exist_ok=True)
    with open(os.path.join(gcodes, "small.gcode"), "w") as fh:
        fh.write("; small\nG28\nG1 X10 Y10 F3000\n")
    write_long_gcode(os.path.join(gcodes, "long.gcode"), 6)
    panel = Panel()
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), gcodes, args.klippy_python)
    with open(os.path.join(sim.workdir, "printer.cfg"), "a") as fh:
        fh.write(MACROS)
    proc = None
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        sim_printer.request(sim.socket_path, "gcode/script", {"script": "RESTART"})
        time.sleep(1.0)
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        with open(conf, "w") as fh:
            fh.write(f"""[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {sim.socket_path}

[authorization]
trusted_clients:
  127.0.0.0/8

[file_manager]

{PANEL_CONF.format(serial=panel.path)}""")
        proc = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        time.sleep(2.0)
        collect(panel, 0.5)
        steps(Recorder(args.out, panel), cap)
    finally:
        cr.stop_process(proc)
        sim_printer.stop(sim)
        panel.close()
        cr.finish_tmp(tmp, args.keep)


if __name__ == "__main__":
    main()
