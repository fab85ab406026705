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
    server = start_server(config=f"""[paneldue]
serial: {panel.path}
machine_name: TestPrinter
macros:
  M118 from_panel
  PANELDUE_BEEP FREQUENCY=500 DURATION=0.5
confirmed_macros:
  M118 confirmed_run
""")
    server.post("/printer/restart")
    time.sleep(0.5)
    server.wait_klippy_state("ready", timeout=30)
    return server


def wait_status(panel, pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        st = panel.ask("M408 S0")
        if pred(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def test_status(srv, panel):
    st = panel.ask("M408 S1")
    assert st["myName"] == "TestPrinter" and st["firmwareName"] == "Klipper"
    assert st["status"] == "I"
    assert len(st["heaters"]) == 2 and all(isinstance(t, float) for t in st["heaters"])
    assert st["homed"] == [0, 0, 0]
    assert "myName" not in panel.ask("M408 S0")


def test_bad_checksum_is_dropped(srv, panel):
    panel.send("M408 S0", good=False)
    reply = panel.ask('M20 S2 P"0:/macros"')
    assert reply == {"dir": "0:/macros", "first": 0, "next": 0,
                     "files": ["M118 from_panel", "PANELDUE_BEEP FREQUENCY=500 DURATION=0.5",
                               "M118 confirmed_run"]}


def test_gcode_and_macro(srv, panel):
    panel.send("G28")
    st = wait_status(panel, lambda s: s["homed"] == [1, 1, 1])
    assert st["status"] == "I"
    pos = srv.result("GET", "/printer/objects/query?toolhead=homed_axes")
    assert pos["status"]["toolhead"]["homed_axes"] == "xyz"
    panel.send("G10 P0 S45")       # tool temperature, RepRapFirmware style
    st = wait_status(panel, lambda s: s["active"][1] == 45.0)
    assert st["hstat"][1] == 2
    panel.send("M290 Z0.05")       # babystepping
    wait_status(panel, lambda s: s["babystep"] == 0.05)
    panel.send("M104 S0")
    panel.send('M98 P"0:/macros/M118 from_panel"')
    st = wait_status(panel, lambda s: "from_panel" in s.get("resp", ""))
    assert "from_panel" in st["resp"]


def test_confirmed_macro(srv, panel):
    panel.send('M98 P"0:/macros/M118 confirmed_run"')
    st = panel.ask("M408 S0")
    assert st["msgBox.mode"] == 3 and "M118 confirmed_run" in st["msgBox.msg"]
    panel.send("M292 P1")                     # cancelled: nothing runs
    st = panel.ask("M408 S0")
    assert "msgBox.mode" not in st and "confirmed_run" not in st.get("resp", "")
    panel.send('M98 P"0:/macros/M118 confirmed_run"')
    seq = panel.ask("M408 S0")["msgBox.seq"]
    assert seq == 2
    panel.send("M292 P0")                     # accepted
    wait_status(panel, lambda s: "confirmed_run" in s.get("resp", ""))


def test_files(srv, panel, printer_data):
    reply = panel.ask('M20 S2 P"0:/gcodes/"')
    assert reply["dir"] == "0:/gcodes" and "*sub" in reply["files"]
    assert "small.gcode" in reply["files"] and "long.gcode" in reply["files"]
    size = os.path.getsize(os.path.join(printer_data, "gcodes", "small.gcode"))
    deadline = time.monotonic() + 10
    while True:
        info = panel.ask('M36 "0:/gcodes/small.gcode"')
        if info["err"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info["err"] == 0 and info["size"] == size
    assert panel.ask('M36 "0:/gcodes/none.gcode"') == {"err": 1}


def test_print_and_cancel(srv, panel):
    panel.send('M32 "0:/gcodes/long.gcode"')
    wait_status(panel, lambda s: s["status"] == "P")
    panel.send("M0")
    wait_status(panel, lambda s: s["status"] == "I")
    stats = srv.result("GET", "/printer/objects/query?print_stats=state")
    assert stats["status"]["print_stats"]["state"] in ("cancelled", "standby")


def test_beep_remote_method(srv, panel):
    srv.post('/printer/gcode/script?script=PANELDUE_BEEP FREQUENCY=500 DURATION=0.5')
    assert panel.read() == {"beep_freq": 500, "beep_length": 500}
