"""Issue 14: ``[paneldue]`` over a pseudo-terminal.  The test plays the
PanelDue on the master side: it sends numbered, checksummed G-code lines
and reads the JSON replies; the printer is the real simulated Klippy.
"""
from __future__ import annotations

import json
import os
import select
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402
from shapes import reference, shape_diff  # noqa: E402


class Panel:
    """The display end of the serial line."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.line_no = 0
        self.buf = b""

    def send(self, cmd: str, good: bool = True) -> None:
        self.line_no += 1
        body = f"N{self.line_no} {cmd}"
        check = 0
        for byte in body.encode():
            check ^= byte
        if not good:
            check ^= 0x55
        os.write(self.master, f"{body}*{check}\n".encode())

    def read(self, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, "no reply from moonflask"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.buf += os.read(self.master, 65536)
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.send(cmd)
        return self.read()

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


MACROS = """
[gcode_macro PANELDUE_BEEP]
gcode:
  {action_call_remote_method("paneldue_beep", frequency=params.FREQUENCY|default(300)|int,
                             duration=params.DURATION|default(1)|float)}
"""


#: the [paneldue] section shared with scripts/capture_paneldue.py
PANEL_CONF = """[paneldue]
serial: {serial}
machine_name: TestPrinter
macros:
  M118 from_panel
  PANELDUE_BEEP FREQUENCY=500 DURATION=0.5
confirmed_macros:
  M118 confirmed_run
"""


@pytest.fixture(scope="module")
def panel():
    p = Panel()
    yield p
    p.close()


@pytest.fixture(scope="module")
def srv(start_server, panel, printer, printer_data):
    gcodes = os.path.join(printer_data, "gcodes")
    os.makedirs(os.path.join(gcodes, "sub"), exist_ok=True)
    with open(os.path.join(gcodes, "small.gcode"), "w") as fh:
        fh.write("; small\nG28\nG1 X10 Y10 F3000\n")
    write_long_gcode(os.path.join(gcodes, "long.gcode"), 6)
    with open(os.path.join(printer.workdir, "printer.cfg"), "a") as fh:
        fh.write(MACROS)
    server = start_server(config=PANEL_CONF.format(serial=panel.path))
    server.post("/printer/restart")
    # ready again with the appended macro loaded (a "ready" seen before the
    # restart took effect would not do)
    deadline = time.monotonic() + 60
    while True:
        server.wait_klippy_state("ready", timeout=60)
        resp = server.get("/printer/objects/list")
        if resp.status_code == 200 and "gcode_macro PANELDUE_BEEP" in resp.json()[
                "result"]["objects"]:
            break
        assert time.monotonic() < deadline, "Klippy did not restart with PANELDUE_BEEP"
        time.sleep(0.2)
    wait_status(panel, lambda s: s["status"] == "I", 30)
    return server


def wait_status(panel, pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        st = panel.ask("M408 S0")
        if pred(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


REF = "paneldue_"


def ref_replies(name: str) -> list:
    """The reference's replies recorded by scripts/capture_paneldue.py."""
    return reference(REF + name)["replies"]


def same_shape(ref: dict, ours: dict, optional: tuple = ()) -> None:
    """Same keys (``optional`` ones and moonflask's ``resp`` may be absent
    on either side) and JSON types, key by key."""
    extra = {"resp", *optional}
    assert set(ref) - extra == set(ours) - extra, (sorted(ref), sorted(ours))
    diffs = shape_diff({k: v for k, v in ref.items() if k in ours},
                       {k: v for k, v in ours.items() if k in ref})
    assert not diffs, diffs


def test_status(srv, panel):
    st = panel.ask("M408 S1")
    ref = ref_replies("m408_s1_idle")[0]
    # the reference sends the macro list with its first S1 only
    same_shape(ref, st, optional=("dir", "files"))
    assert st["myName"] == "TestPrinter"
    assert st["firmwareName"].startswith("Repetier | Klipper ")
    assert {k: st[k] for k in ("numTools", "geometry", "axes", "status", "homed", "tool",
                               "hstat", "sfactor", "efactor")} == {
        k: ref[k] for k in ("numTools", "geometry", "axes", "status", "homed", "tool",
                            "hstat", "sfactor", "efactor")}
    assert len(st["heaters"]) == 2 and all(isinstance(t, float) for t in st["heaters"])
    for cmd, name in (("M408 S0", "m408_s0_idle"), ("M408 S2", "m408_s2_idle"),
                      ("M408 S3", "m408_s3"), ("M408", "m408_no_s")):
        ours = panel.ask(cmd)
        same_shape(ref_replies(name)[0], ours)
        assert ours["status"] == "I" and ours["homed"] == [0, 0, 0]


def test_bad_checksum_is_dropped(srv, panel):
    panel.send("M408 S0", good=False)
    reply = panel.ask('M20 S2 P"0:/macros"')
    assert [reply] == ref_replies("bad_checksum_then_macros") == [
        {"dir": "/macros", "files": ["M118", "PANELDUE_BEEP"]}]


def test_gcode_and_macro(srv, panel):
    panel.send("G28")
    st = wait_status(panel, lambda s: s["homed"] == [1, 1, 1])
    assert st["status"] == "I"
    same_shape(ref_replies("m408_s0_homed")[0], st)
    pos = srv.result("GET", "/printer/objects/query?toolhead=homed_axes")
    assert pos["status"]["toolhead"]["homed_axes"] == "xyz"
    panel.send("M290 Z0.05")       # babystepping
    st = wait_status(panel, lambda s: s["babystep"] == 0.05)
    assert st["babystep"] == ref_replies("m408_s0_after_m290")[0]["babystep"]
    panel.send("G10 P0 S45")       # tool temperature, RepRapFirmware style
    st = wait_status(panel, lambda s: s["active"][1] == 45.0)
    assert st["hstat"][1] == 2
    panel.send("M104 S0")
    # a macro is named by its first word and runs its whole line
    panel.send('M98 P"0:/macros/PANELDUE_BEEP"')
    assert [panel.read()] == ref_replies("m98_beep_macro")
    # a name that is not configured runs nothing, and no reply (as the reference)
    panel.send('M98 P"0:/macros/M118 from_panel"')
    assert ref_replies("m98_macro") == []
    st = panel.ask("M408 S0")
    assert "from_panel" not in st.get("resp", "")


def test_confirmed_macro(srv, panel):
    # M118 is a confirmed macro ("M118 confirmed_run" in confirmed_macros)
    panel.send('M98 P"0:/macros/M118"')
    box = panel.read()
    ref = ref_replies("m98_macro_name")[0]
    assert {k: v for k, v in box.items() if k != "msgBox.seq"} == {
        k: v for k, v in ref.items() if k != "msgBox.seq"}
    first = box["msgBox.seq"]
    st = panel.ask("M408 S0")
    assert "msgBox.mode" not in st                # the reference: the box is not repeated
    panel.send("M292 P1")                         # cancelled: nothing runs
    st = panel.ask("M408 S0")
    assert "confirmed_run" not in st.get("resp", "")
    panel.send('M98 P"0:/macros/M118"')
    assert panel.read()["msgBox.seq"] == first + 1
    panel.send("M292 P0")                         # accepted
    wait_status(panel, lambda s: "confirmed_run" in s.get("resp", ""))


def test_files(srv, panel, printer_data):
    for cmd, name in (('M20 S2 P"0:/gcodes/"', "m20_gcodes"),
                      ('M20 S2 P"0:/gcodes"', "m20_gcodes_noslash"),
                      ('M20 S2 P"0:/gcodes/sub"', "m20_sub")):
        reply = panel.ask(cmd)
        ref = ref_replies(name)[0]
        # the reference's folder also had Moonraker's .thumbs
        assert reply == {"dir": ref["dir"],
                         "files": [f for f in ref["files"] if f != "*.thumbs"]}, cmd
    # unsupported listing types and missing folders get no reply (as the reference)
    assert ref_replies("m20_macros_s0") == [] and ref_replies("m20_missing_dir") == []
    panel.send('M20 S0 P"0:/macros"')
    panel.send('M20 S2 P"0:/gcodes/nope"')
    assert panel.ask("M408 S0")["status"] in ("I", "P")
    size = os.path.getsize(os.path.join(printer_data, "gcodes", "small.gcode"))
    ref = ref_replies("m36_small_plain")[0]
    for cmd in ("M36 small.gcode", "M36 gcodes/small.gcode", 'M36 "0:/gcodes/small.gcode"'):
        deadline = time.monotonic() + 10
        while True:
            info = panel.ask(cmd)
            if info["err"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        same_shape(ref, info)
        assert info["err"] == 0 and info["size"] == size == ref["size"]
        assert info["generatedBy"] == ref["generatedBy"] == "Unknown"
        assert info["lastModified"][0] == "T"
        mtime = os.path.getmtime(os.path.join(printer_data, "gcodes", "small.gcode"))
        assert info["lastModified"] == "T" + time.ctime(mtime)
    assert [panel.ask('M36 "0:/gcodes/none.gcode"')] == ref_replies("m36_none")
    assert [panel.ask("M36")] == ref_replies("m36_no_arg")


def test_print_and_cancel(srv, panel):
    panel.send("M32 0:/gcodes/long.gcode")
    st = wait_status(panel, lambda s: s["status"] == "P")
    same_shape(ref_replies("m408_s2_printing_2")[0], panel.ask("M408 S2"))
    same_shape(ref_replies("m408_s1_printing_2")[0], panel.ask("M408 S1"))
    assert 0 <= st["fraction_printed"] <= 1 and isinstance(st["timesLeft"][0], int)
    panel.send("M25")
    st = wait_status(panel, lambda s: s["status"] != "P")
    ref = ref_replies("m408_s0_paused_2")[0]
    same_shape(ref, st)
    assert st["status"] == ref["status"] == "D"
    panel.send("M24")
    wait_status(panel, lambda s: s["status"] == "P")
    panel.send("M0")
    wait_status(panel, lambda s: s["status"] == "I")
    stats = srv.result("GET", "/printer/objects/query?print_stats=state")
    assert stats["status"]["print_stats"]["state"] in ("cancelled", "standby")


def test_beep_remote_method(srv, panel):
    srv.post('/printer/gcode/script?script=PANELDUE_BEEP FREQUENCY=500 DURATION=0.5')
    assert panel.read() == {"beep_freq": 500, "beep_length": 500}
