"""Issue 14: ``[wled NAME]`` strips over http (a WLED JSON API server on
127.0.0.1) and over serial (a pseudo-terminal pair; the test plays the strip
on the master side).  Compared with the reference (scripts/capture_power.py).
"""
from __future__ import annotations

import json
import os
import select
import threading
import time

import pytest

import fake_devices as fd
from shapes import reference, shape_diff


class SerialWled:
    """The strip end of a pty: reads JSON objects, applies them, answers
    ``{"v": true}`` with the state (as WLED does on its serial line)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.state = {"on": False, "bri": 10, "ps": -1, "seg": [{"id": 0}]}
        self.received: list[dict] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        buf = b""
        depth = 0
        while not self._stop:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for byte in data:
                ch = bytes([byte])
                if ch == b"{":
                    depth += 1
                if depth:
                    buf += ch
                if ch == b"}" and depth:
                    depth -= 1
                    if depth == 0:
                        obj = json.loads(buf)
                        buf = b""
                        self.received.append(obj)
                        fd.apply_wled(self.state, obj)
                        if obj.get("v"):
                            os.write(self.master, json.dumps(self.state).encode() + b"\n")

    def stop(self) -> None:
        self._stop = True
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture(scope="module")
def strips():
    http, serial = fd.Wled(), SerialWled()
    yield http, serial
    http.stop()
    serial.stop()


@pytest.fixture(scope="module")
def srv(start_server, strips):
    http, serial = strips
    return start_server(config=f"""[wled lights]
type: http
address: 127.0.0.1
port: {http.port}
chain_count: 10
initial_red: 0.5
initial_green: 0.25
initial_blue: 0.0

[wled desk]
type: serial
serial: {serial.path}
initial_preset: 8
chain_count: 3

[wled dead]
type: http
address: 127.0.0.1
port: 1
""")


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def test_startup_and_strips(srv, strips):
    http, serial = strips
    # at startup each strip's state is read, nothing is switched (as the reference)
    ref = reference("power_device_requests")
    wait_for(lambda: http.posts and serial.received, what="strips read")
    assert http.posts == [{"v": True}]
    assert serial.received == [{"v": True}]
    assert ref["wled_serial_bytes"].startswith('{"v":true}{"on":true,"ps":8}')
    ref_on = [json.loads(r["body"]) for r in ref["wled"] if '"on":true,"tt"' in r["body"]][0]
    assert "wled" in srv.result("GET", "/server/info")["components"]
    got = srv.get("/machine/wled/strips").json()
    lights = got["result"]["strips"]["lights"]
    assert shape_diff(reference("power_wled_http_on")["body"]["result"]["lights"], lights) == []
    assert lights == {"strip": "lights", "status": "off", "chain_count": 10, "preset": -1,
                      "brightness": -1, "intensity": -1, "speed": -1, "error": None}
    wait_for(lambda: "cannot connect" in (srv.result("GET", "/machine/wled/strips")
                                          ["strips"]["dead"]["error"] or ""),
             what="dead strip error")
    # on: the initial colours (http) and the initial preset (serial)
    res = srv.post("/machine/wled/on?lights&desk").json()
    assert shape_diff(reference("power_wled_http_on")["body"], res, free=("$.result",)) == []
    assert http.posts[1] == ref_on == {
        "on": True, "tt": 0, "bri": 255, "seg": {"bri": 255, "i": [0, 10, [128, 64, 0, 128]]}}
    wait_for(lambda: serial.received[1:] == [{"on": True, "ps": 8}], what="serial preset")
    assert res["result"]["lights"] == reference("power_wled_http_on")["body"]["result"]["lights"]
    assert res["result"]["desk"] == reference("power_wled_serial_on")["body"]["result"]["desk"]


def test_batch(srv, strips):
    http, serial = strips
    ws = srv.ws()
    res = srv.post("/machine/wled/off?lights&desk").json()
    assert shape_diff(reference("power_wled_http_off")["body"], res,
                      free=("$.result",)) == []
    assert res["result"]["lights"]["status"] == "off" and res["result"]["desk"]["status"] == "off"
    assert http.state["on"] is False and http.posts[-1] == {"on": False}
    wait_for(lambda: serial.state["on"] is False, what="serial off")
    res = ws.call("machine.wled.toggle", {"lights": None, "desk": None})
    assert res["lights"]["status"] == "on" and res["desk"]["status"] == "on"
    assert http.state["on"] is True
    wait_for(lambda: serial.state["on"] is True and serial.state["ps"] == 8, what="serial on")
    res = ws.call("machine.wled.status", {"lights": None, "nope": None})
    assert res["nope"] == reference("power_wled_http_status_unknown")["body"]["result"]["nope"]
    assert res["lights"]["status"] == "on"
    res = ws.call("machine.wled.on", {"lights": None})
    assert res["lights"]["status"] == "on"


def test_strip_control(srv, strips):
    http, serial = strips
    ws = srv.ws()
    res = ws.call("machine.wled.post_strip", {"strip": "lights", "action": "on", "preset": 3,
                                              "brightness": 99, "intensity": 50, "speed": 70})
    ref = reference("power_wled_rpc_post_strip_preset")["body"]["result"]
    assert res == ref
    assert http.posts[-2:] == [{"on": True, "ps": 3},
                               {"tt": 0, "seg": {"bri": 99, "ix": 50, "sx": 70}, "bri": 99}]
    assert http.state["ps"] == 3 and http.state["bri"] == 99
    res = srv.result("POST", "/machine/wled/strip?strip=lights&action=control&brightness=20"
                             "&speed=10")
    assert res == reference("power_wled_http_strip_control")["body"]["result"]
    assert http.posts[-1] == {"tt": 0, "seg": {"bri": 20, "sx": 10}, "bri": 20}
    assert ws.call("machine.wled.get_strip", {"strip": "lights"}) == res
    res = ws.call("machine.wled.post_strip", {"strip": "desk", "action": "control",
                                              "brightness": 40})
    assert res["desk"]["brightness"] == 40
    wait_for(lambda: serial.state["bri"] == 40, what="serial brightness")
    for fixture, path in [("power_wled_http_strip_bad_action",
                           "/machine/wled/strip?strip=lights&action=x"),
                          ("power_wled_http_strip_unknown", "/machine/wled/strip?strip=nope")]:
        ref = reference(fixture)
        resp = srv.post(path) if "action" in path else srv.get(path)
        assert (resp.status_code, resp.json()["error"]["message"]) == (
            ref["status"], ref["body"]["error"]["message"])
    # out of range: refused, nothing sent (the reference ignores it silently)
    count = len(http.posts)
    resp = srv.post("/machine/wled/strip?strip=lights&action=control&brightness=300")
    assert resp.status_code == 400 and "brightness" in resp.json()["error"]["message"]
    assert len(http.posts) == count
    res = srv.result("POST", "/machine/wled/strip?strip=lights&action=off")
    assert res == reference("power_wled_http_strip_off")["body"]["result"]


def test_unreachable_strip(srv):
    t0 = time.monotonic()
    resp = srv.post("/machine/wled/strip?strip=dead&action=on")
    assert resp.status_code == 400
    assert "cannot connect" in resp.json()["error"]["message"]
    assert time.monotonic() - t0 < 5
    res = srv.result("POST", "/machine/wled/on?dead&lights")
    assert res["dead"]["error"] and res["lights"]["status"] == "on"


def test_remote_methods(srv, strips, printer):
    """set_wled / set_wled_state called from Klipper macros."""
    http, serial = strips
    macros = """
[gcode_macro WLED_ON]
gcode:
  {action_call_remote_method("set_wled_state", strip="lights", state=True, preset=5)}

[gcode_macro WLED_OFF]
gcode:
  {action_call_remote_method("set_wled_state", strip="lights", state=False)}

[gcode_macro WLED_CONTROL]
gcode:
  {action_call_remote_method("set_wled_state", strip="lights", brightness=77,
                             intensity=-1, speed=-1)}

[gcode_macro SET_WLED_RED]
gcode:
  {action_call_remote_method("set_wled", strip="desk", red=1.0, green=0.0, blue=0.0,
                             white=0.0, index=2, transmit=1)}
"""
    with open(os.path.join(printer.workdir, "printer.cfg"), "a") as fh:
        fh.write(macros)
    srv.post("/printer/restart")
    time.sleep(0.5)
    srv.wait_klippy_state("ready", timeout=30)
    srv.post("/printer/gcode/script?script=WLED_ON")
    wait_for(lambda: http.state["on"] and http.state["ps"] == 5, what="WLED_ON")
    srv.post("/printer/gcode/script?script=WLED_CONTROL")
    wait_for(lambda: http.state["bri"] == 77, what="WLED_CONTROL")
    srv.post("/printer/gcode/script?script=WLED_OFF")
    wait_for(lambda: http.state["on"] is False, what="WLED_OFF")
    srv.post("/printer/gcode/script?script=SET_WLED_RED")
    wait_for(lambda: serial.received and serial.received[-1].get("seg", {}).get("i")
             == [1, [255, 0, 0, 0]], what="SET_WLED")
    strip = srv.result("GET", "/machine/wled/strip?strip=desk")["desk"]
    assert strip["status"] == "on" and strip["preset"] == -1
