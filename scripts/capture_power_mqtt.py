#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's ``type: mqtt`` power devices into
tests/reference/power_mqtt_*.json (format of scripts/capture_reference.py).

A real mosquitto (tests/mqtt_broker.py), the simulated printer and the
reference run side by side; this script plays the plugs on the broker
(:class:`Plug`: it answers ``cmnd/NAME/POWER`` on ``stat/NAME/POWER``) and a
watcher subscribed to ``#`` at qos 2 records every message with its qos and
retain flag.  tests/test_power_mqtt.py runs moonflask with the same
:data:`DEVICES` configuration and compares.

    .venv/bin/python scripts/capture_power_mqtt.py [--reference-python PY] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
import capture_reference as cr  # noqa: E402
import mqtt_broker  # noqa: E402
import sim_printer  # noqa: E402

PREFIX = "power_mqtt_"

#: the [power] sections shared by this capture and tests/test_power_mqtt.py
DEVICES = """\
[power plug]
type: mqtt
command_topic: cmnd/plug/POWER
command_payload:
  {command}
state_topic: stat/plug/POWER
query_topic: cmnd/plug/POWER
state_timeout: 2.0

[power plug2]
type: mqtt
qos: 1
command_topic: cmnd/plug2/POWER
command_payload:
  {% if command == "on" %}1{% else %}0{% endif %}
retain_command_state: True
state_topic: stat/plug2/POWER
state_response_template:
  {% if payload == "1" %}on{% else %}off{% endif %}
query_topic: cmnd/plug2/POWER
query_payload: state
query_after_command: True
state_timeout: 2.0

[power plug3]
type: mqtt
command_topic: cmnd/plug3/POWER
command_payload:
  {command}
state_topic: stat/plug3/POWER
query_topic: cmnd/plug3/POWER
query_payload: q
state_timeout: 2.0
"""


class Plug:
    """A plug on the broker: any payload on ``cmnd/NAME/POWER`` is answered
    on ``stat/NAME/POWER``.  ``on_words``/``off_words`` switch it;
    anything else (a query) just reports.  ``styles``: "word" answers
    ON/OFF, "digit" answers 1/0."""

    def __init__(self, port: int, name: str, style: str = "word") -> None:
        self.name = name
        self.style = style
        self.on = False
        self.commands: list[str] = []
        self.client = mqtt_broker.Client(port)
        self.client.subscribe(f"cmnd/{name}/POWER")
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                _topic, payload, _retain, _props = self.client.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            text = payload.decode().strip()
            self.commands.append(text)
            if text.upper() in ("ON", "1"):
                self.on = True
            elif text.upper() in ("OFF", "0"):
                self.on = False
            self.publish_state()

    def state_text(self) -> str:
        if self.style == "digit":
            return "1" if self.on else "0"
        return "ON" if self.on else "OFF"

    def publish_state(self) -> None:
        self.client.publish(f"stat/{self.name}/POWER", self.state_text())

    def stop(self) -> None:
        self._stop = True
        self.client.close()


class Watcher:
    """Subscribed to ``#`` at qos 2: ``messages`` is a list of
    ``{"topic", "payload" (text), "qos", "retain"}`` in arrival order."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.messages: list[dict] = []
        self.c = mqtt_broker.Client(port)
        self.c.client.on_message = self._on_message
        self.c.subscribe("#", 2)

    def _on_message(self, _c, _u, msg) -> None:
        with self.lock:
            self.messages.append({"topic": msg.topic,
                                  "payload": bytes(msg.payload).decode("utf-8", "replace"),
                                  "qos": msg.qos, "retain": bool(msg.retain)})

    def mark(self) -> int:
        with self.lock:
            return len(self.messages)

    def since(self, start: int, prefix: str = "") -> list[dict]:
        with self.lock:
            return [m for m in self.messages[start:] if m["topic"].startswith(prefix)]


def conf_text(port: int, sock: str, mport: int) -> str:
    return f"""[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {sock}

[authorization]
trusted_clients:
  127.0.0.0/8
  ::1/128

[mqtt]
address: 127.0.0.1
port: {mport}
username: {mqtt_broker.USERNAME}
password: {mqtt_broker.PASSWORD}
instance_name: powerref

{DEVICES}"""


def steps(cap, ws, watcher: Watcher, plugs: dict, startup_mark: int) -> None:
    # the startup queries
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, _, body = cap.http_raw("GET", "/machine/device_power/devices")
        if all(d["status"] != "init" for d in body["result"]["devices"]):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    cap.save(PREFIX + "startup_messages", "mqtt", None, None, None, [],
             messages=watcher.since(startup_mark, "cmnd/") + watcher.since(startup_mark,
                                                                          "stat/"))

    def H(name, method, path, linger=1.0):
        m = watcher.mark()
        doc = cap.http(PREFIX + name, method, path, ws=ws, linger=linger)
        doc["messages"] = watcher.since(m, "cmnd/") + watcher.since(m, "stat/")
        cap.save(doc.pop("name"), doc.pop("transport"), doc.pop("request"),
                 doc.pop("status"), doc.pop("body"), doc.pop("notifications"), **doc)

    def R(name, method, params=None, linger=1.0):
        m = watcher.mark()
        doc = cap.rpc(PREFIX + name, ws, method, params, linger=linger)
        doc["messages"] = watcher.since(m, "cmnd/") + watcher.since(m, "stat/")
        cap.save(doc.pop("name"), doc.pop("transport"), doc.pop("request"),
                 doc.pop("status"), doc.pop("body"), doc.pop("notifications"), **doc)

    H("http_devices", "GET", "/machine/device_power/devices", linger=0)
    R("rpc_devices", "machine.device_power.devices", linger=0)
    H("http_get_plug", "GET", "/machine/device_power/device?device=plug", linger=0)
    H("http_status", "GET", "/machine/device_power/status?plug&plug2&plug3", linger=0)
    H("http_get_plug3", "GET", "/machine/device_power/device?device=plug3", linger=0)
    H("http_plug3_on", "POST", "/machine/device_power/device?device=plug3&action=on")
    H("http_plug3_on_again", "POST", "/machine/device_power/device?device=plug3&action=on")
    H("http_plug_on", "POST", "/machine/device_power/device?device=plug&action=on")
    R("rpc_plug_off", "machine.device_power.post_device", {"device": "plug", "action": "off"})
    H("http_plug_toggle", "POST", "/machine/device_power/device?device=plug&action=toggle")
    H("http_plug2_on", "POST", "/machine/device_power/device?device=plug2&action=on")
    H("http_on_both", "POST", "/machine/device_power/on?plug&plug2")
    H("http_off_both", "POST", "/machine/device_power/off?plug&plug2")
    R("rpc_status", "machine.device_power.status", {"plug": None, "plug2": None}, linger=0)
    # a plug switched by hand
    m = watcher.mark()
    start = ws.mark()
    plugs["plug"].on = True
    plugs["plug"].publish_state()
    time.sleep(1.5)
    cap.save(PREFIX + "notify_external", "websocket", None, None, None,
             ws.notifications(start), messages=watcher.since(m, "stat/"))
    H("http_get_plug_after_external", "GET", "/machine/device_power/device?device=plug",
      linger=0)
    # the plug stops answering
    plugs["plug2"].stop()
    H("http_plug2_no_answer", "POST", "/machine/device_power/device?device=plug2&action=on",
      linger=0.5)
    H("http_get_plug2_after_timeout", "GET", "/machine/device_power/device?device=plug2",
      linger=0)
    # what the broker kept retained (a live subscriber never sees the retain flag)
    late = Watcher(watcher.c.client._port)
    time.sleep(1.5)
    cap.save(PREFIX + "retained", "mqtt", None, None, None, [], messages=late.since(0))
    late.c.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mfpowmq-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    broker = mqtt_broker.Broker(os.path.join(tmp, "broker")).start()
    watcher = Watcher(broker.port)
    plugs = {"plug": Plug(broker.port, "plug"), "plug2": Plug(broker.port, "plug2", "digit"),
             "plug3": Plug(broker.port, "plug3")}
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(data, "gcodes"),
                            args.klippy_python)
    proc = ws = None
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        with open(conf, "w") as fh:
            fh.write(conf_text(port, sim.socket_path, broker.port))
        out = open(os.path.join(tmp, "moonraker.out"), "wb")
        startup_mark = watcher.mark()
        proc = subprocess.Popen(
            [args.reference_python, "-m", "moonraker", "-d", data, "-c", conf,
             "-l", os.path.join(data, "logs", "moonraker.log")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        out.close()
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        ws = cr.WS(f"ws://127.0.0.1:{port}/websocket")
        steps(cap, ws, watcher, plugs, startup_mark)
        with open(os.path.join(args.out, PREFIX + "plug_commands.json"), "w") as fh:
            json.dump({n: p.commands for n, p in plugs.items()}, fh, indent=2)
            fh.write("\n")
    finally:
        if ws is not None:
            ws.close()
        cr.stop_process(proc)
        sim_printer.stop(sim)
        for p in plugs.values():
            try:
                p.stop()
            except Exception:
                pass
        broker.stop()
        cr.finish_tmp(tmp, args.keep)


if __name__ == "__main__":
    main()
