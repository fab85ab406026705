#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's history *auxiliary totals* (sensor
``history_field_*`` options with ``report_total`` / ``report_maximum``) into
tests/reference/sensor_totals_*.json.

A real mosquitto, the simulated printer and the reference run side by side
in a temporary folder (as scripts/capture_mqtt_reference.py).  Three history
fields of one MQTT sensor (maximum + report_maximum, delta + report_total +
report_maximum, average with neither flag, accumulate + report_total); two
completed prints fed with different values, one cancelled print; totals after
each, ``reset_totals`` and the totals after it; a print across a restart of
the reference (SIGTERM mid-print, started again, fed, finished); finally the
rows of the ``job_totals`` table of the reference's SQLite database.

    .venv/bin/python scripts/capture_sensor_totals.py \
        [--reference-python .reference-venv/bin/python] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "tests", "data"))
METER = os.path.join(REPO, "tests", "data", "sensor_meter.conf")
import capture_reference as cr  # noqa: E402
from long_gcode import write_long_gcode  # noqa: E402
import mqtt_broker  # noqa: E402
import sim_printer  # noqa: E402

PREFIX = "sensor_totals_"
TOPIC = "test/sensor/state"

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
instance_name: ref

"""


def feed(client, values):
    for temp, energy, count in values:
        client.client.publish(TOPIC, json.dumps(
            {"temperature": temp, "energy": energy, "count": count}), 0)
        time.sleep(0.3)


def print_job(cap, ws, filename, values, cancel=False):
    """Start ``filename``, feed ``values`` while it prints, wait for the end."""
    start = ws.mark()
    _frame, resp, _notes = cap.rpc_call(ws, "printer.print.start", {"filename": filename},
                                        timeout=90)
    assert resp and "result" in resp, resp
    assert cr.wait_notification(ws, start, "notify_history_changed", 90), "no job added"
    time.sleep(1.0)
    feed(cap.client, values)
    if cancel:
        cap.rpc_call(ws, "printer.print.cancel")
    _i, msg = ws.wait_for(lambda m: isinstance(m, dict) and m.get("method") ==
                          "notify_history_changed" and
                          m["params"][0]["action"] == "finished", start, 120)
    assert msg, "job did not finish"
    time.sleep(0.5)


def wait_print_end(cap, timeout=120):
    """Poll print_stats until Klippy is no longer printing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _s, _h, body = cap.http_raw("GET", "/printer/objects/query?print_stats=state")
        if body["result"]["status"]["print_stats"]["state"] not in ("printing", "paused"):
            return
        time.sleep(0.2)
    raise TimeoutError("print did not end")


def run(args):
    tmp = tempfile.mkdtemp(prefix="mfstot-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    gcodes = os.path.join(data, "gcodes")
    write_long_gcode(os.path.join(gcodes, "long.gcode"), 5)
    write_long_gcode(os.path.join(gcodes, "longer.gcode"), 25)
    os.environ["MOONFLASK_SHARED"] = mqtt_broker.printer_shared_dir(
        os.path.join(tmp, "shared"), sim_printer.shared_dir())
    broker = mqtt_broker.Broker(os.path.join(tmp, "broker")).start()
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, sock=os.path.join(tmp, "klippy", "klippy.sock"),
                            mport=broker.port, user=mqtt_broker.USERNAME,
                            password=mqtt_broker.PASSWORD))
        with open(METER) as meter:
            f.write(meter.read())
    sim = sim_printer.start(os.path.join(tmp, "klippy"), gcodes)
    mr = None
    ws = None
    client = mqtt_broker.Client(broker.port)
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        sim_printer.request(sim.socket_path, "gcode/script", {"script": "G28"}, timeout=60)
        mr = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = cr.Capture(args.out, port, sim)
        cap.client = client
        cr.wait_moonraker(cap)
        time.sleep(3.0)   # a print started at once can end before job_state subscribed
        url = "ws://127.0.0.1:%d/websocket" % port
        ws = cr.WS(url)
        H = lambda n, m, p, **kw: cap.http(PREFIX + n, m, p, ws=ws, **kw)  # noqa
        H("totals_fresh", "GET", "/server/history/totals")
        feed(client, [(20.0, 100.0, 1)])   # before any job: not tracked
        print_job(cap, ws, "long.gcode",
                  [(30.0, 100.5, 2), (35.0, 101.0, 3), (31.0, 101.25, 4)])
        H("list_1", "GET", "/server/history/list")
        H("totals_1", "GET", "/server/history/totals")
        print_job(cap, ws, "long.gcode", [(25.0, 102.0, 5), (26.0, 102.5, 5)])
        H("totals_2", "GET", "/server/history/totals")
        print_job(cap, ws, "longer.gcode", [(40.0, 103.0, 1), (41.0, 104.0, 1)], cancel=True)
        H("list_3", "GET", "/server/history/list")
        H("totals_3_cancelled", "GET", "/server/history/totals")
        H("reset_totals", "POST", "/server/history/reset_totals")
        H("totals_after_reset", "GET", "/server/history/totals")
        H("reset_totals_again", "POST", "/server/history/reset_totals")
        # a print across a restart of the reference
        start = ws.mark()
        cap.rpc_call(ws, "printer.print.start", {"filename": "longer.gcode"})
        cr.wait_notification(ws, start, "notify_history_changed", 20)
        time.sleep(1.0)
        feed(client, [(50.0, 110.0, 7)])
        ws.close()
        ws = None
        cr.stop_process(mr, 15)
        mr = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cr.wait_moonraker(cap)
        ws = cr.WS(url)
        H = lambda n, m, p, **kw: cap.http(PREFIX + n, m, p, ws=ws, **kw)  # noqa
        start = ws.mark()
        time.sleep(1.0)
        feed(client, [(55.0, 111.0, 8), (52.0, 112.0, 9)])
        wait_print_end(cap)
        time.sleep(1.0)
        cap.save(PREFIX + "restart_notifications", "websocket", None, None, None,
                 [m for m in ws.notifications(start)
                  if m.get("method") == "notify_history_changed"])
        H("list_restart", "GET", "/server/history/list")
        H("totals_restart", "GET", "/server/history/totals")
        ws.close()
        ws = None
        cr.stop_process(mr, 15)
        mr = None
        db = os.path.join(data, "database", "moonraker-sql.db")
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM job_totals")]
        conn.close()
        cap.save(PREFIX + "db_job_totals", "sqlite", {"table": "job_totals"}, None, rows)
    finally:
        if ws is not None:
            ws.close()
        cr.stop_process(mr, 15)
        client.close()
        broker.stop()
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def main():
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap, klippy=False)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
