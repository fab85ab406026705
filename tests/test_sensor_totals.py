"""Issue 13: history auxiliary totals of sensor ``history_field_*`` options
(``report_maximum`` / ``report_total``) and sensor fields of a job that
outlives a restart of moonflask.

Real mosquitto, real (simulated) Klippy, real prints; the totals are compared
with the reference Moonraker 0.11.0 fed the same values in the same order
(scripts/capture_sensor_totals.py, tests/reference/sensor_totals_*.json).
Beyond the reference: it marks a job running across its restart
``server_exit`` and records nothing more of the print; moonflask resumes the
job and its sensor fields continue where they were.
"""
from __future__ import annotations

import os
import sys
import time

import pytest

import mqtt_broker
import sim_printer
from shapes import reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402

pytestmark = pytest.mark.skipif(not mqtt_broker.available(),
                                reason="mosquitto (Debian package mosquitto) is not installed")

TOPIC = "test/sensor/state"
# [history] and [mqtt]; the [sensor meter] is tests/data/sensor_meter.conf, the one the
# reference was recorded with (scripts/capture_sensor_totals.py)
CONF = """
[history]

[mqtt]
address: 127.0.0.1
port: {port}
username: {user}
password: {password}
instance_name: totals
"""
METER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sensor_meter.conf")


def ref(name):
    body = reference("sensor_totals_" + name)["body"]
    return body["result"] if isinstance(body, dict) and "result" in body else body


@pytest.fixture(scope="module")
def broker(tmp_root):
    b = mqtt_broker.Broker(os.path.join(tmp_root, "totals-broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def conf(broker, printer_data):
    write_long_gcode(os.path.join(printer_data, "gcodes", "long.gcode"), 10)
    with open(METER) as fh:
        meter = fh.read()
    return CONF.format(port=broker.port, user=mqtt_broker.USERNAME,
                       password=mqtt_broker.PASSWORD) + "\n" + meter


@pytest.fixture(scope="module")
def srv(start_server, conf):
    return start_server(config=conf)


@pytest.fixture(scope="module")
def client(broker, srv):
    c = mqtt_broker.Client(broker.port)
    c.subscribe("totals/moonraker/status")
    c.wait("totals/moonraker/status", 20, lambda p: p == {"server": "online"})
    yield c
    c.close()


def wait_state(srv, states, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        state = srv.result("GET", "/printer/objects/query?print_stats=state")[
            "status"]["print_stats"]["state"]
        if state in states:
            return state
        assert time.monotonic() < deadline, f"print_stats state {state}, not {states}"
        time.sleep(0.05)


def feed(srv, client, values):
    """Publish ``(temperature, energy, count)`` samples one by one, each
    seen by the sensor before the next (a sample's effect is deterministic)."""
    for temp, energy, count in values:
        client.publish(TOPIC, {"temperature": temp, "energy": energy, "count": count})
        want = {"temperature": float(temp), "energy": float(energy), "count": count}
        deadline = time.monotonic() + 15
        while srv.result("GET", "/server/sensors/info?sensor=meter")["values"] != want:
            assert time.monotonic() < deadline, "sensor never saw %r" % (want,)
            time.sleep(0.02)


def finished_job(ws, timeout=90.0):
    note = ws.wait_notification("notify_history_changed", timeout,
                                lambda m: m["params"][0]["action"] == "finished")
    return note["params"][0]["job"]


def print_job(srv, client, values, cancel=False):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    wait_state(srv, ("printing",))
    feed(srv, client, values)
    assert wait_state(srv, ("printing",)) == "printing", "the print ended while being fed"
    if cancel:
        ws.call("printer.print.cancel")
    return finished_job(ws)


def aux_totals(srv):
    return srv.result("GET", "/server/history/totals")["auxiliary_totals"]


def test_totals_as_the_reference(srv, client):
    assert aux_totals(srv) == ref("totals_fresh")["auxiliary_totals"] == []
    feed(srv, client, [(20.0, 100.0, 1)])     # before any job: not tracked
    job = print_job(srv, client, [(30.0, 100.5, 2), (35.0, 101.0, 3), (31.0, 101.25, 4)])
    assert job["auxiliary_data"] == ref("list_1")["jobs"][0]["auxiliary_data"]
    assert aux_totals(srv) == ref("totals_1")["auxiliary_totals"]
    print_job(srv, client, [(25.0, 102.0, 5), (26.0, 102.5, 5)])
    assert aux_totals(srv) == ref("totals_2")["auxiliary_totals"]
    job = print_job(srv, client, [(40.0, 103.0, 1), (41.0, 104.0, 1)], cancel=True)
    want = ref("list_3")["jobs"][0]
    assert (job["status"], job["auxiliary_data"]) == (want["status"], want["auxiliary_data"])
    assert aux_totals(srv) == ref("totals_3_cancelled")["auxiliary_totals"]


def test_totals_kept_across_restart_then_reset(srv, start_server, conf, printer_data):
    before = srv.result("GET", "/server/history/totals")
    assert before["auxiliary_totals"] == ref("totals_3_cancelled")["auxiliary_totals"]
    srv.stop()
    srv2 = start_server(config=conf, data_path=printer_data)
    srv.__dict__.update(srv2.__dict__)   # later tests use the running server
    assert srv.result("GET", "/server/history/totals") == before
    reply = srv.result("POST", "/server/history/reset_totals")
    assert reply["last_auxiliary_totals"] == ref("reset_totals")["last_auxiliary_totals"]
    assert aux_totals(srv) == ref("totals_after_reset")["auxiliary_totals"]
    reply = srv.result("POST", "/server/history/reset_totals")
    assert reply["last_auxiliary_totals"] == ref("reset_totals_again")["last_auxiliary_totals"]


def test_sensor_fields_of_a_job_across_a_restart(srv, client, start_server, conf,
                                                 printer_data):
    """Start a print, feed, restart moonflask mid-print, feed, finish: the
    resumed job's fields hold every value fed (before and after)."""
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    wait_state(srv, ("printing",))
    feed(srv, client, [(50.0, 110.0, 7)])
    ws.call("printer.print.pause")      # keeps the print alive however slow the restart
    wait_state(srv, ("paused",))
    job_id = srv.result("GET", "/server/history/list")["jobs"][0]["job_id"]
    srv.stop()
    srv2 = start_server(config=conf, data_path=printer_data)
    srv.__dict__.update(srv2.__dict__)
    listed = srv.result("GET", "/server/history/list")["jobs"][0]
    assert (listed["job_id"], listed["status"]) == (job_id, "in_progress")
    ws = srv.ws()
    ws.call("printer.print.resume")
    wait_state(srv, ("printing",))
    feed(srv, client, [(55.0, 111.0, 8), (52.0, 112.0, 9)])
    assert wait_state(srv, ("printing",)) == "printing", "the print ended while being fed"
    job = finished_job(ws)
    assert (job["job_id"], job["status"]) == (job_id, "completed")
    values = {a["name"]: a["value"] for a in job["auxiliary_data"]}
    assert values == {"max_temp": 55.0, "energy": 2.0, "avg_temp": pytest.approx(157 / 3),
                      "pulses": 24}
    assert srv.result("GET", f"/server/history/job?uid={job_id}")["job"][
        "auxiliary_data"] == job["auxiliary_data"]
    # totals were zeroed by the previous test: this job only
    assert aux_totals(srv) == [
        {"provider": "sensor meter", "field": "max_temp", "maximum": 55.0, "total": None},
        {"provider": "sensor meter", "field": "energy", "maximum": 2.0, "total": 2.0},
        {"provider": "sensor meter", "field": "pulses", "maximum": None, "total": 24}]


def test_print_running_before_moonflask_started(srv, client, start_server, conf,
                                                printer_data, printer):
    """moonflask down, a print started on Klippy directly, moonflask started:
    the history picks the print up as a new job and its sensor fields track."""
    srv.stop()
    sim_printer.request(printer.socket_path, "gcode/script",
                        {"script": "SDCARD_PRINT_FILE FILENAME=long.gcode"}, timeout=30)
    sim_printer.request(printer.socket_path, "gcode/script", {"script": "PAUSE"}, timeout=30)
    srv2 = start_server(config=conf, data_path=printer_data)
    srv.__dict__.update(srv2.__dict__)
    ws = srv.ws()
    deadline = time.monotonic() + 30
    while srv.result("GET", "/server/history/list")["jobs"][0]["status"] != "in_progress":
        assert time.monotonic() < deadline, "the running print was not picked up"
        time.sleep(0.1)
    ws.call("printer.print.resume")
    wait_state(srv, ("printing",))
    feed(srv, client, [(60.0, 120.0, 1), (61.0, 120.5, 2)])
    assert wait_state(srv, ("printing",)) == "printing", "the print ended while being fed"
    job = finished_job(ws)
    values = {a["name"]: a["value"] for a in job["auxiliary_data"]}
    assert values == {"max_temp": 61.0, "energy": 0.5, "avg_temp": 60.5, "pulses": 3}
