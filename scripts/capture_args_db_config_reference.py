#!/usr/bin/env python3
"""Capture the reference Moonraker 0.11.0 (black box) for issue 10 items 3, 4, 5
and 8 as fixtures in tests/reference/:

- ``args_*``: printer.* endpoints given malformed arguments, with Klippy
  ready and with Klippy away (``*_away``);
- ``config_*``: ``server.config`` on the minimal configuration the tests'
  helper writes (``[server]`` and ``[authorization]`` only);
- ``dbns_*``: the namespaces of a fresh database, which namespaces clients
  may read and write, and query-string type hints;
- ``queue_*``: starting an empty, paused job queue;
- ``announcements_dev_mode_*`` (item 7): with ``[announcements] dev_mode:
  True``, the entries read from ``DATA_PATH/development/announcements/``
  (a second run, without Klippy).

The file format is the one of scripts/capture_reference.py (whose Capture
and WS classes it uses).

    .venv/bin/python scripts/capture_args_db_config_reference.py \
        [--reference-python .reference-venv/bin/python] \
        [--klippy-python .klippy-venv/bin/python] [--out tests/reference] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import sim_printer  # noqa: E402
import capture_reference as cr  # noqa: E402
from capture_reference import WS, Capture, free_port, wait_moonraker  # noqa: E402

#: Malformed (and a few well-formed) arguments of printer.* endpoints:
#: (fixture suffix, JSON-RPC method, HTTP verb, HTTP path, arguments).
ARG_CASES = [
    ("query_objects_string", "printer.objects.query", "POST", "/printer/objects/query",
     {"objects": "nope"}),
    ("query_objects_list", "printer.objects.query", "POST", "/printer/objects/query",
     {"objects": ["toolhead"]}),
    ("query_objects_null", "printer.objects.query", "POST", "/printer/objects/query",
     {"objects": None}),
    ("query_fields_string", "printer.objects.query", "POST", "/printer/objects/query",
     {"objects": {"toolhead": "position"}}),
    ("query_fields_number", "printer.objects.query", "POST", "/printer/objects/query",
     {"objects": {"toolhead": 5}}),
    ("query_fields_mixed", "printer.objects.query", "POST", "/printer/objects/query",
     {"objects": {"toolhead": ["position", 3]}}),
    ("query_ok", "printer.objects.query", "POST", "/printer/objects/query",
     {"objects": {"toolhead": ["position"]}}),
    ("subscribe_objects_string", "printer.objects.subscribe", None, None,
     {"objects": "nope"}),
    ("subscribe_fields_string", "printer.objects.subscribe", None, None,
     {"objects": {"toolhead": "position"}}),
    ("subscribe_no_objects", "printer.objects.subscribe", None, None, {}),
    ("script_number", "printer.gcode.script", "POST", "/printer/gcode/script", {"script": 5}),
    ("script_null", "printer.gcode.script", "POST", "/printer/gcode/script", {"script": None}),
    ("script_list", "printer.gcode.script", "POST", "/printer/gcode/script",
     {"script": ["G28"]}),
    ("script_bool", "printer.gcode.script", "POST", "/printer/gcode/script", {"script": True}),
    ("script_missing", "printer.gcode.script", "POST", "/printer/gcode/script", {}),
    ("print_start_missing", "printer.print.start", "POST", "/printer/print/start", {}),
]

#: Namespaces whose client access is recorded.
NAMESPACES = ["database", "authorized_users", "history", "webcams", "update_manager",
              "moonraker", "gcode_metadata", "announcements", "job_queue"]

#: Query strings of POST /server/database/item (namespace dbns_hints).
HINTS = [
    ("unknown", "key=k1&value:foo=bar"),
    ("str", "key=k2&value:str=12"),
    ("int_bad", "key=k3&value:int=12x"),
    ("key_unknown", "key:foo=k4&value=1"),
    ("empty_hint", "key=k5&value:=7"),
    ("upper_json", "key=k6&value:JSON=%5B1%5D"),
    ("bool_yes", "key=k7&value:bool=yes"),
    ("bool_True", "key=k8&value:bool=True"),
    ("bool_empty", "key=k9&value:bool="),
    ("json_bad", "key=k10&value:json=nope"),
    ("int_float", "key=k11&value:int=1.5"),
    ("float_exp", "key=k12&value:float=1e3"),
    ("bool_1", "key=k13&value:bool=1"),
    ("two_colons", "key=k14&value:x:int=5"),
]


#: The feed file written for the dev_mode run, as ``FEED.xml``.
DEV_FEED = """<?xml version='1.0' encoding='utf-8'?>
<rss version="2.0" xmlns:moonlight="https://arksine.github.io/moonlight"><channel>
<title>arksine/moonlight</title><link>https://github.com/Arksine/moonlight</link>
<description>RSS Announcements for Moonraker</description>
<pubDate>Tue, 22 Mar 2022 23:19:04 GMT</pubDate>
<item><title>Local {feed} announcement</title><link>https://github.com/Arksine/moonlight/issues/{n}</link>
<description>Read from the development folder</description>
<pubDate>Wed, {day:02d} Mar 2022 19:37:58 GMT</pubDate><category>normal</category>
<guid>arksine/moonlight/issue/{n}</guid></item></channel></rss>
"""
DEV_FEEDS = {"moonraker": 71, "klipper": 72}   # feed -> issue number (and day)


def write_dev_feeds(data: str) -> str:
    """Write DEV_FEED for each of DEV_FEEDS into DATA/development/announcements."""
    folder = os.path.join(data, "development", "announcements")
    os.makedirs(folder, exist_ok=True)
    for feed, n in DEV_FEEDS.items():
        with open(os.path.join(folder, f"{feed}.xml"), "w") as fh:
            fh.write(DEV_FEED.format(feed=feed, n=n, day=n - 60))
    return folder


def write_conf(path: str, port: int, klippy_sock: str) -> None:
    """The configuration tests/helpers.py writes for a server."""
    with open(path, "w") as fh:
        fh.write(f"[server]\nhost: 127.0.0.1\nport: {port}\nklippy_uds_address: {klippy_sock}\n\n"
                 "[authorization]\ntrusted_clients:\n  127.0.0.0/8\n  ::1/128\n")


def capture_args(cap: Capture, ws: WS, suffix: str) -> None:
    for name, method, verb, path, params in ARG_CASES:
        cap.rpc(f"args_rpc_{name}{suffix}", ws, method, params)
        if verb:
            cap.http(f"args_http_{name}{suffix}", verb, path, body=params)
    cap.http(f"args_http_query_string_objects{suffix}", "GET",
             "/printer/objects/query?objects=nope")


def capture_db(cap: Capture, ws: WS) -> None:
    cap.http("dbns_fresh_list", "GET", "/server/database/list")
    for ns in NAMESPACES:
        cap.http(f"dbns_get_{ns}", "GET", f"/server/database/item?namespace={ns}")
    cap.rpc("dbns_rpc_get_authorized_users", ws, "server.database.get_item",
            {"namespace": "authorized_users"})
    cap.rpc("dbns_rpc_get_database", ws, "server.database.get_item", {"namespace": "database"})
    for ns in NAMESPACES:
        cap.http(f"dbns_post_{ns}", "POST", "/server/database/item",
                 body={"namespace": ns, "key": "probe", "value": 1})
    for ns in NAMESPACES:
        cap.http(f"dbns_delete_{ns}", "DELETE",
                 f"/server/database/item?namespace={ns}&key=probe")
    for name, query in HINTS:
        cap.http(f"dbns_hint_{name}", "POST",
                 f"/server/database/item?namespace=dbns_hints&{query}")


def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="mfref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    port = free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(data, "gcodes"),
                            args.klippy_python)
    proc = None
    ws = None
    try:
        sim_printer.wait_ready(sim.socket_path, 90, sim)
        write_conf(conf, port, sim.socket_path)
        proc = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = Capture(args.out, port, sim)
        wait_moonraker(cap, 90)
        ws = WS(f"ws://127.0.0.1:{port}/websocket")
        # item 4: server.config of the minimal configuration
        cap.http("config_server_config_minimal", "GET", "/server/config")
        # item 5: the fresh database first
        capture_db(cap, ws)
        # item 8: an empty, paused queue is started
        cap.rpc("queue_status_fresh", ws, "server.job_queue.status")
        cap.rpc("queue_start_empty_paused", ws, "server.job_queue.start", linger=1.5)
        cap.rpc("queue_status_after_start", ws, "server.job_queue.status")
        cap.rpc("queue_delete_all_empty", ws, "server.job_queue.delete_job", {"all": True},
                linger=1.5)
        # item 3: malformed arguments, Klippy ready then away
        capture_args(cap, ws, "")
        sim_printer.stop(sim)
        wait_moonraker(cap, 60, state="disconnected")
        capture_args(cap, ws, "_away")
    finally:
        if ws is not None:
            ws.close()
        cr.stop_process(proc)
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def run_dev_mode(args: argparse.Namespace) -> None:
    """Item 7: the reference with dev_mode reads DATA_PATH/development/announcements."""
    tmp = tempfile.mkdtemp(prefix="mfref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    write_dev_feeds(data)
    port = free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    write_conf(conf, port, os.path.join(tmp, "no-klippy.sock"))
    with open(conf, "a") as fh:
        fh.write("\n[announcements]\ndev_mode: True\n")
    proc = subprocess.Popen(
        [args.reference_python, "-m", "moonraker", "-d", data, "-c", conf,
         "-l", os.path.join(data, "logs", "moonraker.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    try:
        cap = Capture(args.out, port, None)
        wait_moonraker(cap, 90, state="disconnected")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, _, body = cap.http_raw("GET", "/server/announcements/list")
            if status == 200 and len(body["result"]["entries"]) >= len(DEV_FEEDS):
                break
            time.sleep(0.5)
        cap.http("announcements_dev_mode_list", "GET", "/server/announcements/list")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cr.reference_arguments(p)
    p.add_argument("--only", choices=("main", "dev_mode"), default=None)
    args = p.parse_args(argv)
    if args.only in (None, "main"):
        run(args)
    if args.only in (None, "dev_mode"):
        run_dev_mode(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
