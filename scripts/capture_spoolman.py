#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's ``[spoolman]`` behaviour against
the real Spoolman (../shared/spoolman) into tests/reference/spoolman_*.json.

The simulated printer, Spoolman (SQLite in a temp folder) and the reference
run side by side on free ports; fixture format as scripts/capture_reference.py.

    .venv/bin/python scripts/capture_spoolman.py \
        [--reference-python .reference-venv/bin/python] [--out tests/reference] [--keep]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
import capture_reference as cr  # noqa: E402
import sim_printer  # noqa: E402
from helpers import WsClient  # noqa: E402
from spoolman_service import SpoolmanService  # noqa: E402

CONF = """\
[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {sock}

[authorization]
trusted_clients:
  127.0.0.0/8

[history]

[spoolman]
server: {spoolman}
sync_rate: 1
"""
GCODE = "G28\nM83\nG1 X10 Y10 F3000\nG1 E5 F300\nG1 X20 E10 F1200\nG1 E-1\nG1 E1\n"


def poll(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(fn)


def capture(cap, url, spm, ws):
    def http(name, method, path, body=None):
        resp = requests.request(method, url + path, json=body, timeout=15)
        parsed = resp.json()
        if isinstance(parsed, dict) and "error" in parsed:
            parsed["error"].pop("traceback", None)
        cap.save(name, "http", {"method": method, "path": path, "body": body},
                 resp.status_code, parsed)
        return parsed

    def rpc(name, method, params=None):
        reply = ws.request(method, params)
        cap.save(name, "websocket", {"method": method, "params": params}, None, reply)
        return reply

    poll(lambda: requests.get(url + "/server/spoolman/status").json()["result"][
        "spoolman_connected"])
    spool = spm.new_spool("ref")
    sid = spool["id"]
    http("spoolman_status", "GET", "/server/spoolman/status")
    rpc("spoolman_rpc_status", "server.spoolman.status")
    http("spoolman_http_spool_id.get", "GET", "/server/spoolman/spool_id")
    ws.drain()
    http("spoolman_http_spool_id.post", "POST", "/server/spoolman/spool_id", {"spool_id": sid})
    note = ws.wait_notification("notify_active_spool_set")
    cap.save("spoolman_notify_active_spool_set", "websocket", None, None, note)
    http("spoolman_http_spool_id.post_same", "POST", "/server/spoolman/spool_id",
         {"spool_id": sid})
    time.sleep(0.5)
    cap.save("spoolman_notify_after_same_id", "websocket", None, None,
             [n for n in ws.drain() if n["method"] == "notify_active_spool_set"])
    http("spoolman_http_spool_id.post_bad", "POST", "/server/spoolman/spool_id",
         {"spool_id": "abc"})
    http("spoolman_http_spool_id.post_unknown", "POST", "/server/spoolman/spool_id",
         {"spool_id": 99999})
    http("spoolman_http_spool_id.post_clear", "POST", "/server/spoolman/spool_id", {})
    rpc("spoolman_rpc_post_spool_id", "server.spoolman.post_spool_id", {"spool_id": sid})
    rpc("spoolman_rpc_get_spool_id", "server.spoolman.get_spool_id")
    for name, body in [
            ("get_v1", {"request_method": "GET", "path": f"/v1/spool/{sid}"}),
            ("get_v2", {"request_method": "GET", "path": "/v1/vendor", "use_v2_response": True}),
            ("post_v1", {"request_method": "POST", "path": "/v1/vendor", "body": {"name": "W"}}),
            ("post_v2", {"request_method": "POST", "path": "/v1/vendor", "body": {"name": "X"},
                         "use_v2_response": True}),
            ("query", {"request_method": "GET", "path": "/v1/vendor", "query": "name=W"}),
            ("404_v1", {"request_method": "GET", "path": "/v1/spool/99999"}),
            ("404_v2", {"request_method": "GET", "path": "/v1/spool/99999",
                        "use_v2_response": True}),
            ("422_v1", {"request_method": "POST", "path": "/v1/vendor", "body": {"bad": 1}}),
            ("422_v2", {"request_method": "POST", "path": "/v1/vendor", "body": {"bad": 1},
                        "use_v2_response": True}),
            ("bad_path", {"request_method": "GET", "path": "/api/v1/vendor"}),
            ("bad_method", {"request_method": "FOO", "path": "/v1/vendor"}),
            ("lower_method", {"request_method": "get", "path": "/v1/vendor"}),
            ("no_path", {"request_method": "GET"}),
            ("no_method", {"path": "/v1/vendor"})]:
        http(f"spoolman_proxy_{name}", "POST", "/server/spoolman/proxy", body)
        rpc(f"spoolman_rpc_proxy_{name}", "server.spoolman.proxy", body)
    # usage of a print, and the history record
    time.sleep(2)
    before = spm.used_length(sid)
    http("spoolman_print_start", "POST", "/printer/print/start", {"filename": "ex.gcode"})
    poll(lambda: spm.used_length(sid) >= before + 15 - 0.01)
    time.sleep(3)
    cap.save("spoolman_print_usage", "lifecycle", {"expected": 15.0}, None,
             {"before": before, "after": spm.used_length(sid)})
    http("spoolman_history_list", "GET", "/server/history/list")
    # Spoolman down
    spm.stop()
    note = ws.wait_notification("notify_spoolman_status_changed", 30)
    cap.save("spoolman_notify_status_changed", "websocket", None, None, note)
    requests.post(url + "/printer/gcode/script", json={"script": "M83\nG1 E7 F300"})
    time.sleep(3)
    http("spoolman_status_disconnected", "GET", "/server/spoolman/status")
    http("spoolman_proxy_unavailable_v1", "POST", "/server/spoolman/proxy",
         {"request_method": "GET", "path": "/v1/vendor"})
    http("spoolman_proxy_unavailable_v2", "POST", "/server/spoolman/proxy",
         {"request_method": "GET", "path": "/v1/vendor", "use_v2_response": True})
    spm.start()
    poll(lambda: requests.get(url + "/server/spoolman/status").json()["result"][
        "spoolman_connected"], 60)
    poll(lambda: spm.used_length(sid) >= before + 22 - 0.01)
    time.sleep(3)
    cap.save("spoolman_usage_after_outage", "lifecycle", {"expected": 22.0}, None,
             {"before": before, "after": spm.used_length(sid)})
    spm.api("DELETE", f"/spool/{sid}")
    note = ws.wait_notification("notify_active_spool_set", 15)
    cap.save("spoolman_notify_spool_deleted", "websocket", None, None, note)
    http("spoolman_http_spool_id.after_delete", "GET", "/server/spoolman/spool_id")
    http("spoolman_database_moonraker", "GET", "/server/database/item?namespace=moonraker")


def run(args):
    tmp = tempfile.mkdtemp(prefix="mfspref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    gcodes = os.path.join(data, "gcodes")
    with open(os.path.join(gcodes, "ex.gcode"), "w") as f:
        f.write(GCODE)
    spm = SpoolmanService(os.path.join(tmp, "spoolman"), cr.free_port()).start()
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, sock=os.path.join(tmp, "klippy", "klippy.sock"),
                            spoolman=spm.url))
    sim = sim_printer.start(os.path.join(tmp, "klippy"), gcodes)
    mr = None
    ws = None
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        mr = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        ws = WsClient(f"ws://127.0.0.1:{port}/websocket")
        capture(cap, f"http://127.0.0.1:{port}", spm, ws)
    finally:
        if ws is not None:
            ws.close()
        cr.stop_process(mr)
        spm.stop()
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def main():
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap, klippy=False)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
