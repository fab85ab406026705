"""Issue 10 item 14: a print that pauses before Klippy's first status tick
reports ``printing`` (BASE_PAUSE, PAUSE or M600 in its first lines) is a
history job like any other: ``added`` at start, ``finished`` at the end,
totals updated.

The reference (tests/reference/conf_c_pause_at_once_*.json, recorded by
scripts/capture_conf_c_reference.py) infers the start from complete -> paused
but loses a print that goes standby -> paused (the first print after Klippy
starts); moonflask tracks it from every transition, standby -> paused too.
"""
from __future__ import annotations

import os
import time

import pytest

from shapes import reference, shape_diff

MOVES = "".join("G1 X%d Y%d F6000\n" % (50 + i % 100, 60) for i in range(2000))
FILES = {
    "pause": "G28\nPAUSE\n" + MOVES + "M118 pause done\n",
    "base_pause": "G28\nBASE_PAUSE\n" + MOVES + "M118 base_pause done\n",
    "m600": "G28\nM600\n" + MOVES + "M118 m600 done\n",
}
FREE = ("$.job.metadata",)


@pytest.fixture(scope="module")
def srv(start_server, printer_data):
    for name, text in FILES.items():
        with open(os.path.join(printer_data, "gcodes", name + ".gcode"), "w") as fh:
            fh.write(text)
    return start_server(config="[history]\n")


def history_events(ws, count, timeout=60.0):
    """The next ``count`` notify_history_changed payloads."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {out} arrived")
        try:
            msg = ws.notifications.get(timeout=left)
        except Exception:
            continue
        if msg.get("method") == "notify_history_changed":
            out.append(msg["params"][0])
    return out


def wait_state(srv, state, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = srv.result("GET", "/printer/objects/query?print_stats=state")
        if st["status"]["print_stats"]["state"] == state:
            return
        time.sleep(0.05)
    raise TimeoutError(state)


@pytest.mark.parametrize("name", list(FILES))   # "pause" first: from standby
def test_print_that_pauses_at_once_is_a_job(srv, name):
    before = srv.result("GET", "/server/history/totals")["job_totals"]
    ws = srv.ws()
    assert ws.call("printer.print.start", {"filename": name + ".gcode"}) == "ok"
    added = history_events(ws, 1)[0]
    wait_state(srv, "paused")
    assert added["action"] == "added"
    job = added["job"]
    assert job["filename"] == name + ".gcode" and job["status"] == "in_progress"
    listed = srv.result("GET", "/server/history/list?limit=1")["jobs"][0]
    assert listed["job_id"] == job["job_id"] and listed["status"] == "in_progress"
    ws.call("printer.print.resume")
    finished = history_events(ws, 1)[0]
    assert finished["action"] == "finished"
    assert finished["job"]["job_id"] == job["job_id"]
    assert finished["job"]["status"] == "completed"
    assert finished["job"]["total_duration"] > 0
    totals = srv.result("GET", "/server/history/totals")["job_totals"]
    assert totals["total_jobs"] == before["total_jobs"] + 1
    assert totals["total_time"] == pytest.approx(
        before["total_time"] + finished["job"]["total_duration"])
    # the reference records base_pause and m600 (printed after a complete)
    ref_name = "m600" if name == "pause" else name
    ref = reference("conf_c_pause_at_once_" + ref_name)["notifications"]
    assert [n["params"][0]["action"] for n in ref] == ["added", "finished"]
    assert shape_diff(ref[0]["params"][0], added, free=FREE) == []
    assert shape_diff(ref[1]["params"][0], finished, free=FREE) == []
