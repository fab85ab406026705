#!/usr/bin/env python3
"""Capture the reference Moonraker's ``machine.device_power.*`` and
``machine.wled.*`` responses and notifications into tests/reference/power_*.json
(the format of scripts/capture_reference.py), against the simulated printer
and the fake devices of tests/fake_devices.py on 127.0.0.1.

Also records which requests the reference sent to each fake device
(``power_device_requests.json``): the wire protocol moonflask must speak.

    .venv/bin/python scripts/capture_power.py --reference-python .reference-venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
import capture_reference as cr  # noqa: E402
import fake_devices as fd  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tests", "data"))
from long_gcode import write_long_gcode  # noqa: E402
import sim_printer  # noqa: E402


class SerialRecorder:
    """The strip end of a pty: records every byte the reference writes."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.data = b""
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            self.data += chunk


def make_devices() -> dict:
    # The reference takes no port in these devices' address: each listens on
    # port 80 of its own loopback address (127.0.0.N).
    base = random.randint(2, 200)

    def at(i: int) -> dict:
        return {"host": f"127.0.0.{base + i}", "port": 80}
    return {"tasmota": fd.Tasmota(**at(0)), "shelly1": fd.Shelly(1, **at(1)),
            "shelly2": fd.Shelly(2, **at(2)),
            "homeassistant": fd.HomeAssistant("tok", "switch.printer"),
            "hue": fd.Hue("hueuser", "3"), "homeseer": fd.Homeseer(**at(3)),
            "loxone": fd.Loxone(**at(4)),
            "smartthings": fd.SmartThings("sttok", "dev-1", **at(5)), "tplink": fd.TPLink(),
            "http": fd.GenericHttp(), "wled": fd.Wled(**at(6))}


def conf_text(port: int, sock: str, d: dict, dead_port: int, serial_path: str) -> str:
    ha_port = d["homeassistant"].port
    return f"""[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {sock}

[authorization]
trusted_clients:
  127.0.0.0/8
  ::1/128

[power beeper]
type: klipper_device
object_name: output_pin BEEPER_pin
locked_while_printing: True

[power tasmota]
type: tasmota
address: {d['tasmota'].host}

[power lockedplug]
type: tasmota
address: {d['tasmota'].host}
locked_while_printing: True

[power dead]
type: tasmota
address: 127.0.0.1:{dead_port}

[power shelly1]
type: shelly
address: {d['shelly1'].host}

[power shelly2]
type: shelly
address: {d['shelly2'].host}

[power homeassistant]
type: homeassistant
address: 127.0.0.1
port: {ha_port}
device: switch.printer
token: tok
status_delay: 0.1

[power hue]
type: hue
address: 127.0.0.1
port: {d['hue'].port}
user: hueuser
device_id: 3

[power homeseer]
type: homeseer
address: {d['homeseer'].host}
device: 42

[power loxone]
type: loxonev1
address: {d['loxone'].host}
output_id: printer

[power smartthings]
type: smartthings
address: {d['smartthings'].host}
protocol: http
port: 80
token: sttok
device: dev-1

[power tplink]
type: tplink_smartplug
address: 127.0.0.1
port: {d['tplink'].port}

[power http]
type: http
on_url: {d['http'].url}/on
off_url: {d['http'].url}/off
status_url: {d['http'].url}/status
response_template:
  {{% set resp = http_request.last_response().json() %}}
  {{resp["power"]}}

[wled desk]
type: serial
serial: {serial_path}
initial_preset: 8
chain_count: 3

[wled lights]
type: http
address: {d['wled'].host}
chain_count: 10
initial_red: 0.5
initial_green: 0.25
initial_blue: 0.0
"""


def steps(cap, ws, devices, sim) -> None:
    time.sleep(3.0)
    p = "power_"
    cap.http(p + "http_devices", "GET", "/machine/device_power/devices")
    cap.rpc(p + "rpc_devices", ws, "machine.device_power.devices")
    cap.http(p + "http_get_device", "GET", "/machine/device_power/device?device=tasmota")
    cap.rpc(p + "rpc_get_device", ws, "machine.device_power.get_device", {"device": "tasmota"})
    cap.http(p + "http_get_device_unknown", "GET", "/machine/device_power/device?device=nope")
    cap.http(p + "http_get_device_missing", "GET", "/machine/device_power/device")
    cap.http(p + "http_post_device_on", "POST",
             "/machine/device_power/device?device=tasmota&action=on", ws=ws, linger=1.0)
    cap.rpc(p + "rpc_post_device_off", ws, "machine.device_power.post_device",
            {"device": "tasmota", "action": "off"}, linger=1.0)
    cap.rpc(p + "rpc_post_device_toggle", ws, "machine.device_power.post_device",
            {"device": "tasmota", "action": "toggle"}, linger=1.0)
    cap.http(p + "http_post_device_bad_action", "POST",
             "/machine/device_power/device?device=tasmota&action=blink")
    cap.http(p + "http_post_device_no_action", "POST",
             "/machine/device_power/device?device=tasmota")
    cap.http(p + "http_post_device_unknown", "POST",
             "/machine/device_power/device?device=nope&action=on")
    cap.http(p + "http_post_dead_on", "POST",
             "/machine/device_power/device?device=dead&action=on", ws=ws, linger=0.5)
    cap.http(p + "http_get_dead", "GET", "/machine/device_power/device?device=dead")
    cap.http(p + "http_status", "GET", "/machine/device_power/status?tasmota&beeper")
    cap.http(p + "http_status_unknown", "GET", "/machine/device_power/status?tasmota&nope")
    cap.http(p + "http_status_none", "GET", "/machine/device_power/status")
    cap.rpc(p + "rpc_status", ws, "machine.device_power.status",
            {"tasmota": None, "beeper": None})
    cap.http(p + "http_on", "POST", "/machine/device_power/on?beeper&tasmota", ws=ws, linger=1.0)
    cap.rpc(p + "rpc_off", ws, "machine.device_power.off",
            {"beeper": None, "tasmota": None}, linger=1.0)
    cap.http(p + "http_on_none", "POST", "/machine/device_power/on")
    # every network type once on and off
    for name in ("shelly1", "shelly2", "homeassistant", "hue", "homeseer", "loxone",
                 "smartthings", "tplink", "http"):
        cap.http(f"{p}http_{name}_on", "POST",
                 f"/machine/device_power/device?device={name}&action=on", ws=ws, linger=0.3)
        cap.http(f"{p}http_{name}_off", "POST",
                 f"/machine/device_power/device?device={name}&action=off")
    # a change made on Klippy's side (SET_PIN) is reported
    start = ws.mark()
    cap.http_raw("POST", "/printer/gcode/script?script=SET_PIN%20PIN=BEEPER_pin%20VALUE=1")
    time.sleep(1.5)
    cap.save(p + "notify_external_klipper", "websocket", None, None, None,
             ws.notifications(start))
    cap.http(p + "http_get_beeper", "GET", "/machine/device_power/device?device=beeper")
    # WLED
    w = "power_wled_"
    cap.http(w + "http_strips", "GET", "/machine/wled/strips")
    cap.rpc(w + "rpc_strips", ws, "machine.wled.strips")
    cap.http(w + "http_status", "GET", "/machine/wled/status?lights")
    cap.http(w + "http_status_unknown", "GET", "/machine/wled/status?nope")
    cap.http(w + "http_on", "POST", "/machine/wled/on?lights", ws=ws, linger=0.5)
    cap.http(w + "http_off", "POST", "/machine/wled/off?lights", ws=ws, linger=0.5)
    cap.http(w + "http_toggle", "POST", "/machine/wled/toggle?lights")
    cap.rpc(w + "rpc_get_strip", ws, "machine.wled.get_strip", {"strip": "lights"})
    cap.rpc(w + "rpc_post_strip_preset", ws, "machine.wled.post_strip",
            {"strip": "lights", "action": "on", "preset": 3, "brightness": 99,
             "intensity": 50, "speed": 70})
    cap.http(w + "http_strip_control", "POST",
             "/machine/wled/strip?strip=lights&action=control&brightness=20&speed=10")
    cap.http(w + "http_strip_control_none", "POST",
             "/machine/wled/strip?strip=lights&action=control")
    cap.http(w + "http_strip_bad_action", "POST", "/machine/wled/strip?strip=lights&action=x")
    cap.http(w + "http_strip_bad_brightness", "POST",
             "/machine/wled/strip?strip=lights&action=control&brightness=300")
    cap.http(w + "http_strip_unknown", "GET", "/machine/wled/strip?strip=nope")
    cap.http(w + "http_strip_off", "POST", "/machine/wled/strip?strip=lights&action=off")
    # locked_while_printing during a real print
    started = cap.http_raw("POST", "/printer/print/start?filename=long.gcode")
    deadline = time.monotonic() + 30
    state = None
    while time.monotonic() < deadline:
        _, _, body = cap.http_raw("GET", "/printer/objects/query?print_stats=state")
        state = body["result"]["status"]["print_stats"]["state"]
        if state == "printing":
            break
        time.sleep(0.2)
    time.sleep(1.0)
    cap.http(p + "http_post_locked", "POST",
             "/machine/device_power/device?device=beeper&action=on",
             print_start=started[2], print_state=state)
    cap.http(p + "http_post_locked_plug", "POST",
             "/machine/device_power/device?device=lockedplug&action=on", ws=ws, linger=0.5)
    cap.http(p + "http_on_locked", "POST", "/machine/device_power/on?beeper&lockedplug")
    cap.http_raw("POST", "/printer/print/cancel")
    cap.http(p + "http_server_info", "GET", "/server/info")
    cap.http(p + "http_server_config", "GET", "/server/config")


def main() -> None:
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mfpow-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    write_long_gcode(os.path.join(data, "gcodes", "long.gcode"), 8)
    devices = make_devices()
    serial = SerialRecorder()
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(data, "gcodes"),
                            args.klippy_python)
    proc = ws = None
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        with open(conf, "w") as fh:
            fh.write(conf_text(port, sim.socket_path, devices, cr.free_port(), serial.path))
        proc = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        ws = cr.WS(f"ws://127.0.0.1:{port}/websocket")
        steps(cap, ws, devices, sim)
        cap.http("power_wled_serial_on", "POST", "/machine/wled/strip?strip=desk&action=on")
        cap.http("power_wled_serial_control", "POST",
                 "/machine/wled/strip?strip=desk&action=control&brightness=40")
        cap.http("power_wled_serial_off", "POST", "/machine/wled/off?desk")
        time.sleep(0.5)
        reqs = {name: (dev.requests if name == "tplink" else
                       [{k: r[k] for k in ("method", "path", "body")} for r in dev.requests])
                for name, dev in devices.items()}
        reqs["wled_serial_bytes"] = serial.data.decode("utf-8", "replace")
        with open(os.path.join(args.out, "power_device_requests.json"), "w") as fh:
            json.dump(reqs, fh, indent=2)
            fh.write("\n")
    finally:
        if ws is not None:
            ws.close()
        cr.stop_process(proc)
        sim_printer.stop(sim)
        for dev in devices.values():
            dev.stop()
        cr.finish_tmp(tmp, args.keep)


if __name__ == "__main__":
    main()
