#!/usr/bin/env python3
"""Capture a ``printer_data`` written by the reference Moonraker 0.11.0 (black
box), for the "switching from Moonraker" test (issue 10 item 13).

Starts the simulated printer and the reference with [history], [job_queue]
and [announcements] (dev_mode, feeds from DATA_PATH/development), changes
state through its API the way front ends do -- two webcams, Mainsail and
Fluidd settings, a user, a new API key, a login, a queued job, a printed job,
a dismissed announcement, an added feed -- records what its API then
returns (``tests/reference/switch_*.json``, format of capture_reference.py),
stops it and keeps its database as ``tests/data/switch_reference/moonraker-sql.db``.
tests/test_switch_from_moonraker.py starts moonflask on that database and
compares.

    .venv/bin/python scripts/capture_switch_reference.py \
        [--reference-python .reference-venv/bin/python] \
        [--klippy-python .klippy-venv/bin/python] [--out tests/reference] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import sim_printer  # noqa: E402
from capture_args_db_config_reference import write_dev_feeds  # noqa: E402
import capture_reference as cr  # noqa: E402
from capture_reference import WS, Capture, free_port, wait_moonraker  # noqa: E402

sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "data"))
from long_gcode import write_long_gcode  # noqa: E402

DB_OUT = os.path.join(REPO_ROOT, "tests", "data", "switch_reference", "moonraker-sql.db")
#: The printed file: gcodes/PRINTED, write_long_gcode(PRINT_SECONDS) (the
#: simulated Klippy runs moves in simulated time: length sets duration).
PRINTED, PRINT_SECONDS = "switch.gcode", 2.0
EXTRA_CONF = "\n[history]\n\n[job_queue]\n\n[announcements]\ndev_mode: True\n"
USER, PASSWORD = "alice", "alice-pass-1"
WEBCAMS = [
    {"name": "printer_cam", "stream_url": "/webcam/?action=stream",
     "snapshot_url": "/webcam/?action=snapshot", "flip_horizontal": True, "target_fps": 20,
     "target_fps_idle": 3, "rotation": 90, "aspect_ratio": "16:9", "icon": "mdiCamera",
     "location": "door", "service": "webrtc-camerastreamer", "extra_data": {"x": 1}},
    {"name": "side", "stream_url": "http://cam.local/stream", "enabled": False},
]
ITEMS = [
    ("mainsail", "general.printername", "Sim MK3S"),
    ("mainsail", "dashboard.nonExpanded", ["webcam"]),
    ("fluidd", "uiSettings.general.instanceName", "Sim"),
    ("fluidd", "uiSettings.theme", {"isDark": True, "color": "#2196F3"}),
]


def write_conf(path: str, port: int, klippy_sock: str) -> None:
    with open(path, "w") as fh:
        fh.write(f"[server]\nhost: 127.0.0.1\nport: {port}\nklippy_uds_address: {klippy_sock}\n\n"
                 "[authorization]\ntrusted_clients:\n  127.0.0.1/32\n" + EXTRA_CONF)


def wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.3)
    raise TimeoutError(what)


def change_state(cap: Capture, ws: WS) -> None:
    for cam in WEBCAMS:
        cap.rpc(f"switch_webcam_add_{cam['name']}", ws, "server.webcams.post_item", cam)
    for ns, key, value in ITEMS:
        cap.rpc(f"switch_post_{ns}_{key.replace('.', '_')}", ws,
                "server.database.post_item", {"namespace": ns, "key": key, "value": value})
    cap.http("switch_post_user", "POST", "/access/user",
             body={"username": USER, "password": PASSWORD})
    cap.http("switch_post_api_key", "POST", "/access/api_key")
    cap.http("switch_login", "POST", "/access/login",
             body={"username": USER, "password": PASSWORD, "source": "moonraker"})
    cap.rpc("switch_queue_post_job", ws, "server.job_queue.post_job",
            {"filenames": [PRINTED]})

    def done():
        _, _, body = cap.http_raw("GET", "/server/history/list")
        jobs = body["result"]["jobs"]
        return jobs and jobs[0]["status"] == "completed"

    def klippy_idle():
        _, _, body = cap.http_raw("GET", "/printer/objects/query?print_stats=state")
        return body["result"]["status"]["print_stats"]["state"] == "complete"
    # the reference sometimes misses a print started right after it connects
    # (no job in its history): print again until it records one
    for attempt in range(4):
        cap.rpc("switch_print_start", ws, "printer.print.start", {"filename": PRINTED})
        wait(klippy_idle, 60, "the print to end")
        try:
            wait(done, 10, "the job in the history")
            break
        except TimeoutError:
            print("reference recorded no job; printing again", cap.http_raw(
                "GET", "/server/history/list")[2], flush=True)
    else:
        raise TimeoutError("the reference recorded no job")

    def entries():
        _, _, body = cap.http_raw("GET", "/server/announcements/list")
        return body["result"]["entries"]
    entry = wait(entries, 30, "announcements")[0]
    cap.http("switch_dismiss", "POST",
             f"/server/announcements/dismiss?entry_id={entry['entry_id']}")
    cap.http("switch_post_feed", "POST", "/server/announcements/feed?name=my_feed")


def record_state(cap: Capture, ws: WS) -> None:
    """What the API returns once the state is changed (switch_state_*)."""
    cap.rpc("switch_state_webcams", ws, "server.webcams.list")
    cap.rpc("switch_state_webcams_db", ws, "server.database.get_item", {"namespace": "webcams"})
    for ns in ("mainsail", "fluidd"):
        cap.rpc(f"switch_state_db_{ns}", ws, "server.database.get_item", {"namespace": ns})
    cap.rpc("switch_state_db_list", ws, "server.database.list")
    cap.rpc("switch_state_users", ws, "access.users.list")
    cap.rpc("switch_state_api_key", ws, "access.get_api_key")
    cap.rpc("switch_state_history", ws, "server.history.list")
    cap.rpc("switch_state_totals", ws, "server.history.totals")
    cap.rpc("switch_state_queue", ws, "server.job_queue.status")
    cap.rpc("switch_state_announcements", ws, "server.announcements.list")
    cap.rpc("switch_state_feeds", ws, "server.announcements.feeds")
    cap.rpc("switch_state_metadata", ws, "server.files.metadata", {"filename": PRINTED})


def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="mfref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    write_long_gcode(os.path.join(data, "gcodes", PRINTED), PRINT_SECONDS)
    write_dev_feeds(data)
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
        change_state(cap, ws)
        record_state(cap, ws)
        ws.close()
        ws = None
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        os.makedirs(os.path.dirname(DB_OUT), exist_ok=True)
        shutil.copyfile(os.path.join(data, "database", "moonraker-sql.db"), DB_OUT)
        with open(os.path.join(os.path.dirname(DB_OUT), "README.md"), "w") as fh:
            fh.write("moonraker-sql.db: the database of Moonraker 0.11.0 after "
                     "scripts/capture_switch_reference.py changed its state through its API "
                     "(see that script); used by tests/test_switch_from_moonraker.py.\n")
        print("database kept as", DB_OUT, json.dumps(sorted(os.listdir(data))))
    finally:
        if ws is not None:
            ws.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cr.reference_arguments(p)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
