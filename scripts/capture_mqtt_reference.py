#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's MQTT behaviour into tests/reference/mqtt_*.json.

A real mosquitto (tests/mqtt_broker.py: password file, TLS listener), the
simulated printer (with the PUBLISH_ALERT macro) and the reference run side by
side in a temporary folder.  A paho client subscribed to ``#`` records every
topic the reference publishes; API requests are sent over MQTT and over the
websocket (server.mqtt.*, server.sensors.*).  Fixture format as in
scripts/capture_reference.py; MQTT exchanges have ``"transport": "mqtt"`` and
``messages: [[topic, payload, retain], ...]``.

    .venv/bin/python scripts/capture_mqtt_reference.py \
        [--reference-python .reference-venv/bin/python] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
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
import mqtt_broker  # noqa: E402
import sim_printer  # noqa: E402

PREFIX = "mqtt_"
INSTANCE = "ref"

CONF = """\
[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {sock}

[authorization]
trusted_clients:
  127.0.0.0/8
  ::1/128

[history]

[mqtt]
address: 127.0.0.1
port: {mport}
username: {user}
password: {password}
instance_name: {instance}
mqtt_protocol: v5
status_objects:
  webhooks
  toolhead=position,homed_axes
  print_stats=state
publish_split_status: {split}
default_qos: 0

[sensor mqtt_test]
type: mqtt
name: MQTT Test
state_topic: test/sensor/state
state_response_template:
  {{% set notification = payload|fromjson %}}
  {{set_result("temperature", notification["temperature"]|float)}}
  {{set_result("humidity", notification["humidity"]|float)}}
parameter_temperature:
  units=C
parameter_humidity:
  units=%
history_field_max_temp:
  parameter=temperature
  desc=Maximum temperature
  strategy=maximum
  units=C
  report_total=false
  report_maximum=true
history_field_avg_humidity:
  parameter=humidity
  desc=Average humidity
  strategy=average
  units=%
"""


class Mqtt:
    """MQTT request/response against the reference, recorded like cap.rpc."""

    def __init__(self, cap: cr.Capture, watcher: mqtt_broker.Client, client: mqtt_broker.Client):
        self.cap = cap
        self.watcher = watcher
        self.client = client
        self.rid = 7000

    def request(self, name: str, method: str, params=None, raw: str | None = None,
                wait: float = 10.0, count: int = 1):
        self.rid += 1
        frame = {"jsonrpc": "2.0", "method": method, "id": self.rid}
        if params is not None:
            frame["params"] = params
        text = raw if raw is not None else json.dumps(frame)
        self.watcher.drain()
        self.client.client.publish(f"{INSTANCE}/moonraker/api/request", text, 0)
        replies = []
        deadline = time.monotonic() + wait
        while len(replies) < count and time.monotonic() < deadline:
            try:
                payload, retain, _ = self.client.wait(f"{INSTANCE}/moonraker/api/response",
                                                      max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            replies.append(payload)
        body = replies[0] if len(replies) == 1 else replies
        return self.cap.save(PREFIX + "api_" + name, "mqtt", frame if raw is None else
                             {"raw": raw}, None, body, [], messages=self.watcher.drain())

    def topics(self, name: str, linger: float, **extra):
        time.sleep(linger)
        return self.cap.save(PREFIX + name, "mqtt", None, None, None, [],
                             messages=self.watcher.drain(), **extra)


def capture(cap, mq: Mqtt, ws, gcodes, broker, tmp):
    R = lambda n, m, params=None, **kw: cap.rpc(PREFIX + "rpc_" + n, ws, m, params, **kw)  # noqa
    H = lambda n, m, p, **kw: cap.http(PREFIX + "http_" + n, m, p, ws=ws, **kw)  # noqa
    H("server.config", "GET", "/server/config")
    # -- request / response over MQTT -------------------------------------
    mq.request("server.info", "server.info")
    mq.request("objects.query", "printer.objects.query", {"objects": {"webhooks": None}})
    mq.request("printer.info", "printer.info")
    mq.request("unknown_method", "server.nope")
    mq.request("files.metadata.missing", "server.files.metadata", {"filename": "nope.gcode"})
    mq.request("files.metadata.no_arg", "server.files.metadata")
    mq.request("server.mqtt.publish", "server.mqtt.publish", {"topic": "x/y"})
    mq.request("identify", "server.connection.identify",
               {"client_name": "x", "version": "1", "type": "web", "url": "http://x"})
    mq.request("bad_json", "", raw="{not json", wait=3.0)
    mq.request("batch", "", raw=json.dumps([
        {"jsonrpc": "2.0", "method": "server.info", "id": 1},
        {"jsonrpc": "2.0", "method": "printer.info", "id": 2}]), wait=3.0, count=2)
    ts = int(time.time() * 1e6)
    mq.request("timestamp.first", "server.info", {"mqtt_timestamp": ts})
    mq.request("timestamp.dup", "server.info", {"mqtt_timestamp": ts}, wait=3.0)
    # -- status on a Klippy change ----------------------------------------
    mq.request("gcode.G28", "printer.gcode.script", {"script": "G28"}, wait=60)
    mq.topics("status_after_G28", 1.5)
    # -- server.mqtt.* over the websocket ---------------------------------
    R("publish.text", "server.mqtt.publish", {"topic": "test/pub", "payload": "hello"})
    mq.topics("publish.text.messages", 0.5)
    R("publish.json", "server.mqtt.publish",
      {"topic": "test/pub", "payload": {"a": [1, 2]}, "qos": 1, "retain": True, "timeout": 5})
    R("publish.number", "server.mqtt.publish", {"topic": "test/pub", "payload": 12.5})
    R("publish.bool", "server.mqtt.publish", {"topic": "test/pub", "payload": True})
    R("publish.none", "server.mqtt.publish", {"topic": "test/pub"})
    mq.topics("publish.json.messages", 0.5)
    R("publish.no_topic", "server.mqtt.publish", {"payload": "x"})
    R("publish.bad_qos", "server.mqtt.publish", {"topic": "test/pub", "qos": 3})
    R("publish.wildcard", "server.mqtt.publish", {"topic": "test/#"})
    H("publish", "POST", "/server/mqtt/publish", body={"topic": "test/pub", "payload": "h"})
    R("subscribe.timeout", "server.mqtt.subscribe", {"topic": "test/none", "timeout": 1})
    R("subscribe.retained", "server.mqtt.subscribe", {"topic": "test/pub", "timeout": 3})
    mq.watcher.client.publish("test/text", "plain text", 0, True)
    R("subscribe.text", "server.mqtt.subscribe", {"topic": "test/text", "timeout": 3})
    R("subscribe.wildcard", "server.mqtt.subscribe", {"topic": "test/+", "timeout": 1})
    R("subscribe.no_topic", "server.mqtt.subscribe", {"timeout": 1})
    H("subscribe.timeout", "POST", "/server/mqtt/subscribe",
      body={"topic": "test/none2", "timeout": 1})
    # -- publish_mqtt_topic remote method ---------------------------------
    R("gcode.PUBLISH_ALERT", "printer.gcode.script", {"script": "PUBLISH_ALERT PAYLOAD=fire"})
    mq.topics("publish_mqtt_topic.messages", 1.0)
    # -- sensors -----------------------------------------------------------
    H("sensors.list.empty", "GET", "/server/sensors/list")
    start = ws.mark()
    mq.watcher.client.publish("test/sensor/state",
                              json.dumps({"temperature": 21.5, "humidity": 40}), 0)
    cr.wait_notification(ws, start, "notify_sensor_update", 5)
    time.sleep(0.3)
    cap.save(PREFIX + "sensor_update_notifications", "websocket", None, None, None,
             ws.notifications(start))
    H("sensors.list", "GET", "/server/sensors/list")
    H("sensors.list.extended", "GET", "/server/sensors/list?extended=true")
    R("sensors.list", "server.sensors.list")
    H("sensors.info", "GET", "/server/sensors/info?sensor=mqtt_test")
    H("sensors.info.extended", "GET", "/server/sensors/info?sensor=mqtt_test&extended=true")
    H("sensors.info.unknown", "GET", "/server/sensors/info?sensor=nope")
    H("sensors.info.missing", "GET", "/server/sensors/info")
    time.sleep(1.2)
    H("sensors.measurements", "GET", "/server/sensors/measurements?sensor=mqtt_test")
    H("sensors.measurements.all", "GET", "/server/sensors/measurements")
    H("sensors.measurements.unknown", "GET", "/server/sensors/measurements?sensor=nope")
    mq.watcher.client.publish("test/sensor/state", "garbage", 0)
    time.sleep(0.5)
    H("sensors.info.after_garbage", "GET", "/server/sensors/info?sensor=mqtt_test")
    # -- a print with sensor values in history ------------------------------
    start = ws.mark()
    R("print.long", "printer.print.start", {"filename": "long.gcode"})
    cr.wait_notification(ws, start, "notify_history_changed", 10)
    time.sleep(1.0)
    for i in range(4):
        mq.watcher.client.publish("test/sensor/state",
                                  json.dumps({"temperature": 30 + i, "humidity": 50 + i}), 0)
        time.sleep(0.3)
    idx, _ = ws.wait_for(lambda m: isinstance(m, dict) and m.get("method") ==
                         "notify_history_changed" and m["params"][0]["action"] == "finished",
                         start, 30)
    time.sleep(0.5)
    cap.save(PREFIX + "print_notifications", "websocket", None, None, None,
             [m for m in ws.notifications(start) if m.get("method") != "notify_gcode_response"])
    H("history.list", "GET", "/server/history/list")
    H("history.totals", "GET", "/server/history/totals")
    mq.topics("print.messages", 0.2)


def retained(cap, broker, name):
    """What a client subscribing now gets as retained messages."""
    late = mqtt_broker.Client(broker.port)
    late.subscribe(INSTANCE + "/#")
    time.sleep(1.0)
    msgs = late.drain()
    late.close()
    return cap.save(PREFIX + name, "mqtt", None, None, None, [], messages=msgs)


def run(args):
    tmp = tempfile.mkdtemp(prefix="mfmref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    gcodes = os.path.join(data, "gcodes")
    with open(os.path.join(gcodes, "small.gcode"), "w") as f:
        f.write("; small test file\nG28\nG1 X10 Y10 F3000\nM118 printed\n")
    write_long_gcode(os.path.join(gcodes, "long.gcode"), 5)
    os.environ["MOONFLASK_SHARED"] = mqtt_broker.printer_shared_dir(
        os.path.join(tmp, "shared"), sim_printer.shared_dir())
    broker = mqtt_broker.Broker(os.path.join(tmp, "broker")).start()
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, sock=os.path.join(tmp, "klippy", "klippy.sock"),
                            mport=broker.port, user=mqtt_broker.USERNAME,
                            password=mqtt_broker.PASSWORD, instance=INSTANCE,
                            split=args.split))
    sim = sim_printer.start(os.path.join(tmp, "klippy"), gcodes)
    mr = None
    ws = None
    watcher = mqtt_broker.Client(broker.port)
    watcher.subscribe("#")
    client = mqtt_broker.Client(broker.port)
    client.subscribe(f"{INSTANCE}/moonraker/api/response")
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        out = open(os.path.join(tmp, "moonraker.out"), "wb")
        mr = subprocess.Popen([args.reference_python, "-m", "moonraker", "-d", data, "-c", conf,
                               "-l", os.path.join(data, "logs", "moonraker.log")],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
        out.close()
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        mq = Mqtt(cap, watcher, client)
        suffix = "_split" if args.split else ""
        retained(cap, broker, "retained_startup" + suffix)
        if args.split:
            mq.topics("startup" + suffix, 2.0)
            mq.request("gcode.G28" + suffix, "printer.gcode.script", {"script": "G28"}, wait=60)
            mq.topics("status_after_G28" + suffix, 1.5)
        else:
            mq.topics("startup", 2.0)
            ws = cr.WS("ws://127.0.0.1:%d/websocket" % port)
            capture(cap, mq, ws, gcodes, broker, tmp)
        # last will: kill -9
        mr.kill()
        mr.wait()
        mq.topics("last_will" + suffix, 3.0)
        retained(cap, broker, "retained_after_kill" + suffix)
    finally:
        if ws is not None:
            ws.close()
        if mr is not None and mr.poll() is None:
            mr.send_signal(signal.SIGTERM)
            try:
                mr.wait(10)
            except subprocess.TimeoutExpired:
                mr.kill()
        watcher.close()
        client.close()
        broker.stop()
        sim_printer.stop(sim)
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference-python", default=".reference-venv/bin/python")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "reference"))
    ap.add_argument("--split", action="store_true", help="publish_split_status: True run")
    ap.add_argument("--keep", action="store_true")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
