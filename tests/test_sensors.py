"""Issue 13: ``[sensor NAME]`` of type mqtt fed through a real mosquitto, its
API, notifications and history fields in a real print, compared with the
reference Moonraker 0.11.0's recordings (scripts/capture_mqtt_reference.py)."""
from __future__ import annotations

import os
import sys
import time

import pytest

import mqtt_broker
from shapes import reference, shape_diff

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402

pytestmark = pytest.mark.skipif(not mqtt_broker.available(),
                                reason="mosquitto (Debian package mosquitto) is not installed")

CONF = """
[history]

[mqtt]
address: 127.0.0.1
port: {port}
username: {user}
password: {password}
instance_name: sensors

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


@pytest.fixture(scope="module")
def broker(tmp_root):
    b = mqtt_broker.Broker(os.path.join(tmp_root, "sensor-broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def srv(start_server, broker, printer_data):
    write_long_gcode(os.path.join(printer_data, "gcodes", "long.gcode"), 10)
    return start_server(config=CONF.format(port=broker.port, user=mqtt_broker.USERNAME,
                                           password=mqtt_broker.PASSWORD))


@pytest.fixture(scope="module")
def client(broker, srv):
    c = mqtt_broker.Client(broker.port)
    c.subscribe("sensors/moonraker/status")
    c.wait("sensors/moonraker/status", 20, lambda p: p == {"server": "online"})
    yield c
    c.close()


def ref(name):
    return reference("mqtt_" + name)


def test_sensor_before_any_message(srv, client):
    got = srv.get("/server/sensors/list").json()
    assert got == ref("http_sensors.list.empty")["body"]
    assert "sensor" in srv.result("GET", "/server/info")["components"]


def test_server_config_section(srv):
    ours = srv.result("GET", "/server/config")["config"]["sensor mqtt_test"]
    ref = reference("mqtt_http_server.config")["body"]["result"]["config"]["sensor mqtt_test"]
    assert ours == ref


def test_sensor_fed_by_mqtt(srv, client):
    ws = srv.ws()
    client.publish("test/sensor/state", {"temperature": 21.5, "humidity": 40})
    note = ws.wait_notification("notify_sensor_update")
    assert note == ref("sensor_update_notifications")["notifications"][0]
    for name, path in [("sensors.list", "/server/sensors/list"),
                       ("sensors.list.extended", "/server/sensors/list?extended=true"),
                       ("sensors.info", "/server/sensors/info?sensor=mqtt_test"),
                       ("sensors.info.extended",
                        "/server/sensors/info?sensor=mqtt_test&extended=true")]:
        assert srv.get(path).json() == ref("http_" + name)["body"], name
    assert ws.call("server.sensors.list") == ref("rpc_sensors.list")["body"]["result"]
    for name, path in [("sensors.info.unknown", "/server/sensors/info?sensor=nope"),
                       ("sensors.info.missing", "/server/sensors/info"),
                       ("sensors.measurements.unknown",
                        "/server/sensors/measurements?sensor=nope")]:
        resp = srv.get(path)
        want = ref("http_" + name)
        assert (resp.status_code, resp.json()["error"]["message"]) == (
            want["status"], want["body"]["error"]["message"]), name
    # measurements: sampled once a second
    deadline = time.monotonic() + 10
    while True:
        got = srv.result("GET", "/server/sensors/measurements?sensor=mqtt_test")
        if len(got["mqtt_test"].get("temperature", [])) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shape_diff(ref("http_sensors.measurements")["body"]["result"], got) == []
    assert set(got["mqtt_test"]["temperature"]) == {21.5}
    assert set(got["mqtt_test"]["humidity"]) == {40.0}
    assert shape_diff(ref("http_sensors.measurements.all")["body"]["result"],
                      srv.result("GET", "/server/sensors/measurements")) == []
    # a payload the template cannot parse changes nothing
    client.publish("test/sensor/state", "garbage")
    client.publish("test/sensor/state", {"temperature": 22.0, "humidity": 41})
    note = ws.wait_notification("notify_sensor_update")
    assert note["params"] == [{"mqtt_test": {"temperature": 22.0, "humidity": 41.0}}]


def test_history_fields_in_a_real_print(srv, client):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    deadline = time.monotonic() + 20
    while srv.result("GET", "/printer/objects/query?print_stats=state")["status"][
            "print_stats"]["state"] != "printing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for i in range(4):
        client.publish("test/sensor/state", {"temperature": 30 + i, "humidity": 50 + i})
    deadline = time.monotonic() + 10
    while srv.result("GET", "/server/sensors/info?sensor=mqtt_test")["values"] != {
            "temperature": 33.0, "humidity": 53.0}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert srv.result("GET", "/printer/objects/query?print_stats=state")["status"][
        "print_stats"]["state"] == "printing"
    note = ws.wait_notification("notify_history_changed", 60,
                                lambda m: m["params"][0]["action"] == "finished")
    job = note["params"][0]["job"]
    want = ref("http_history.list")["body"]["result"]["jobs"][0]
    assert job["status"] == want["status"] == "completed"
    assert job["auxiliary_data"] == want["auxiliary_data"]
    listed = srv.result("GET", "/server/history/list")["jobs"][0]
    assert listed["auxiliary_data"] == want["auxiliary_data"]
    totals = srv.result("GET", "/server/history/totals")
    assert totals["auxiliary_totals"] == ref("http_history.totals")["body"]["result"][
        "auxiliary_totals"]
