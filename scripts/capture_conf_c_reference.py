#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's behaviour for issue 10 items 9 and 14
into tests/reference/conf_c_*.json:

- a print that pauses before Klippy's first status tick (BASE_PAUSE, PAUSE or
  M600 in its first lines), resumed and completed: the history notifications,
  the job and the totals;
- a gcode file rewritten in place by another program (open the existing file,
  truncate, write, close; with ``"w"`` and with ``"r+"``; at once after it
  was created; twice in a row): the ``notify_filelist_changed`` that follows.

Same approach and fixture format as scripts/capture_reference.py (whose
Capture/WS helpers it reuses): the simulated printer and the reference run
side by side on free ports in a temporary directory.

    .venv/bin/python scripts/capture_conf_c_reference.py \
        --reference-python .reference-venv/bin/python
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import capture_reference as cr  # noqa: E402
import sim_printer  # noqa: E402

PREFIX = "conf_c_"

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
"""

# Files that pause at once (the simulated printer runs G28 in no time): the
# pause comes before Klippy's first status tick reports "printing".
MOVES = "".join("G1 X%d Y%d F6000\n" % (50 + i % 100, 60) for i in range(2000))
PAUSE_FILES = {   # the first is printed from "standby", the others after a "complete"
    "pause": "G28\nPAUSE\n" + MOVES + "M118 pause done\n",
    "base_pause": "G28\nBASE_PAUSE\n" + MOVES + "M118 base_pause done\n",
    "m600": "G28\nM600\n" + MOVES + "M118 m600 done\n",
}
SMALL = "; small test file\nG28\nG1 X10 Y10 F3000\nM118 printed\n"
KEEP = ("notify_history_changed", "notify_filelist_changed")


def print_state(sock: str) -> str:
    """print_stats.state, asked of Klippy directly."""
    st = sim_printer.request(sock, "objects/query", {"objects": {"print_stats": ["state"]}})
    return st["status"]["print_stats"]["state"]


def wait_print_state(sock: str, states: tuple[str, ...], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = print_state(sock)
        if state in states:
            return state
        time.sleep(0.05)
    raise TimeoutError("print_stats not in %s" % (states,))


def capture(cap, port, sock, gcodes, wss):
    url = "ws://127.0.0.1:%d/websocket" % port
    ws = cr.WS(url)
    wss.append(ws)
    cap.rpc(PREFIX + "identify", ws, "server.connection.identify",
            {"client_name": "capture", "version": "0.0.1", "type": "web",
             "url": "http://example.com"})

    # ---- item 14: a job that pauses at once ---------------------------------
    for name in PAUSE_FILES:
        start = ws.mark()
        cap.rpc_call(ws, "printer.print.start", {"filename": name + ".gcode"})
        wait_print_state(sock, ("paused",))
        time.sleep(1.0)
        paused = ws.notifications(start)
        cap.http(PREFIX + "history_list_paused_" + name, "GET", "/server/history/list?limit=1")
        cap.rpc_call(ws, "printer.print.resume")
        idx, _ = ws.wait_for(lambda m: isinstance(m, dict)
                             and m.get("method") == "notify_history_changed"
                             and m["params"][0]["action"] == "finished", start, 30)
        time.sleep(0.5)
        notes = [m for m in ws.notifications(start) if m.get("method") in KEEP]
        cap.save(PREFIX + "pause_at_once_" + name, "websocket", None, None, None, notes,
                 while_paused=[m for m in paused if m.get("method") in KEEP],
                 finished=idx is not None)
        cap.http(PREFIX + "history_totals_after_" + name, "GET", "/server/history/totals")
    cap.http(PREFIX + "history_list", "GET", "/server/history/list")

    # ---- item 9: a file rewritten in place by another program ---------------
    path = os.path.join(gcodes, "inplace.gcode")
    with open(path, "w") as fh:
        fh.write(SMALL)
    time.sleep(2.0)
    for mode in ("w", "r+"):
        start = ws.mark()
        with open(path, mode) as fh:
            fh.truncate(0)
            fh.write(SMALL + "M118 rewritten %s\n" % mode)
        time.sleep(2.5)
        cap.save(PREFIX + "disk_rewrite_in_place_" + mode.replace("+", "plus"), "disk",
                 {"mode": mode}, None, None,
                 [m for m in ws.notifications(start) if m.get("method") in KEEP])
    # the same, at once after the previous write (no reader keeps up with it)
    quick = os.path.join(gcodes, "quick.gcode")
    start = ws.mark()
    with open(quick, "w") as fh:
        fh.write(SMALL)
    with open(quick, "r+") as fh:
        fh.truncate(0)
        fh.write(SMALL + "M118 at once\n")
    time.sleep(2.5)
    cap.save(PREFIX + "disk_create_then_rewrite", "disk", {"mode": "w then r+"}, None, None,
             [m for m in ws.notifications(start) if m.get("method") in KEEP])
    start = ws.mark()
    for i in range(2):
        with open(path, "r+") as fh:
            fh.truncate(0)
            fh.write(SMALL + "M118 twice %d\n" % i)
    time.sleep(2.5)
    cap.save(PREFIX + "disk_rewrite_twice", "disk", {"mode": "r+ twice"}, None, None,
             [m for m in ws.notifications(start) if m.get("method") in KEEP])
    # rewritten, then held open (a file server, an editor): when is it announced?
    start = ws.mark()
    fh = open(path, "r+")
    fh.truncate(0)
    fh.write(SMALL + "M118 held open\n")
    fh.flush()
    time.sleep(4.0)
    held = [m for m in ws.notifications(start) if m.get("method") in KEEP]
    mid = ws.mark()
    fh.close()
    time.sleep(2.5)
    cap.save(PREFIX + "disk_rewrite_held_open", "disk", {"mode": "r+, held open 4 s"}, None,
             None, held, after_close=[m for m in ws.notifications(mid)
                                      if m.get("method") in KEEP])
    # saved the way editors and sync tools do: a temporary file renamed over it
    for tag, tmpname in (("hidden", ".inplace.gcode.tmp1"), ("visible", "inplace.gcode.tmp2")):
        start = ws.mark()
        tmp = os.path.join(gcodes, tmpname)
        with open(tmp, "w") as fh:
            fh.write(SMALL + "M118 replaced %s\n" % tag)
        os.replace(tmp, path)
        time.sleep(2.5)
        cap.save(PREFIX + "disk_replace_" + tag, "disk", {"temp": tmpname}, None, None,
                 [m for m in ws.notifications(start) if m.get("method") in KEEP])
    # a hard link made by another program (no write, no close), then rewritten
    start = ws.mark()
    linked = os.path.join(gcodes, "linked.gcode")
    os.link(path, linked)
    time.sleep(2.5)
    made = [m for m in ws.notifications(start) if m.get("method") in KEEP]
    mid = ws.mark()
    with open(linked, "r+") as fh:
        fh.truncate(0)
        fh.write(SMALL + "M118 linked\n")
    time.sleep(2.5)
    cap.save(PREFIX + "disk_hard_link", "disk", {"link": "linked.gcode"}, None, None, made,
             after_rewrite=[m for m in ws.notifications(mid) if m.get("method") in KEEP])


def run(args):
    tmp = tempfile.mkdtemp(prefix="mfcref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    gcodes = os.path.join(data, "gcodes")
    for name, text in PAUSE_FILES.items():
        with open(os.path.join(gcodes, name + ".gcode"), "w") as f:
            f.write(text)
    port = cr.free_port()
    sim = sim_printer.start(os.path.join(tmp, "klippy"), gcodes)
    conf = os.path.join(data, "config", "moonraker.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, sock=sim.socket_path))
    mr = None
    wss: list = []
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        mr = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap, timeout=120)
        capture(cap, port, sim.socket_path, gcodes, wss)
    finally:
        for w in wss:
            w.close()
        cr.stop_process(mr)
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def main():
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap, klippy=False)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
