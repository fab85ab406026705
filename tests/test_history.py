"""Issue 5: job tracking and print history on the real (simulated) Klippy.

Prints real files start to finish, pauses/resumes/cancels a long one,
restarts moonflask mid-print and kills Klippy mid-print, and compares the
responses and notifications with the reference recordings
(tests/reference/jobs_*.json)."""
from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from shapes import reference, shape_diff

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402

SHARED = os.environ.get("MOONFLASK_SHARED", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared"))
SLICED = "slic3r_cube20_0.2mm.gcode"
FREE = ("$.result.job.metadata", "$.result.jobs[0].metadata", "$.job.metadata")


@pytest.fixture(scope="module")
def gcodes(printer_data):
    path = os.path.join(printer_data, "gcodes")
    shutil.copy(os.path.join(SHARED, "gcode", SLICED), path)
    write_long_gcode(os.path.join(path, "long.gcode"), 8)
    with open(os.path.join(path, "bad.gcode"), "w") as fh:
        fh.write("G28\nG1 X9999\n")
    return path


@pytest.fixture(scope="module")
def srv(start_server, gcodes, printer_data):
    yield start_server(config="[history]\n")
    if os.environ.get("MOONFLASK_KEEP_LOGS"):
        shutil.copytree(os.path.join(printer_data, "logs"), os.environ["MOONFLASK_KEEP_LOGS"],
                        dirs_exist_ok=True)
        shutil.copy(os.path.join(printer_data, "klippy", "klippy.log"),
                    os.environ["MOONFLASK_KEEP_LOGS"])


def history_events(ws, count, timeout=60.0):
    """The next ``count`` notify_history_changed payloads."""
    out, seen = [], []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {out} arrived; also seen: {seen[-20:]}")
        try:
            msg = ws.notifications.get(timeout=left)
        except Exception:
            continue
        if msg.get("method") == "notify_history_changed":
            out.append(msg["params"][0])
        else:
            seen.append(msg.get("method") if msg.get("method") != "notify_gcode_response"
                        else msg["params"])
    return out


def wait_state(srv, state, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = srv.result("GET", "/printer/objects/query?print_stats=state")
        if st["status"]["print_stats"]["state"] == state:
            return
        time.sleep(0.1)
    raise TimeoutError(state)


def test_empty_history_shapes(srv):
    assert srv.result("GET", "/server/history/list") == {"count": 0, "jobs": []}
    totals = srv.get("/server/history/totals").json()
    assert shape_diff(reference("jobs_http_history.totals.empty")["body"], totals) == []
    assert totals["result"]["job_totals"]["total_jobs"] == 0


def test_print_sliced_file_to_completion(srv):
    ws = srv.ws()
    assert ws.call("printer.print.start", {"filename": SLICED}) == "ok"
    added, finished = history_events(ws, 2)
    assert added["action"] == "added" and finished["action"] == "finished"
    job = finished["job"]
    assert job["job_id"] == "000001" and job["status"] == "completed"
    assert job["filename"] == SLICED and job["exists"] is True
    assert job["user"] == "_TRUSTED_USER_"
    # the job carries Klippy's own figures (the simulated printer can finish
    # this file within one 250 ms status tick on an idle machine, and then
    # Klippy itself reports no filament: history must say the same)
    stats = srv.result("GET", "/printer/objects/query?print_stats")["status"]["print_stats"]
    assert job["filament_used"] == pytest.approx(stats["filament_used"])
    assert job["print_duration"] == pytest.approx(stats["print_duration"])
    assert job["total_duration"] > 0
    assert job["end_time"] >= job["start_time"]
    assert job["metadata"]["size"] == os.path.getsize(
        os.path.join(SHARED, "gcode", SLICED))
    ref = reference("jobs_print_long_cancel_notifications")["notifications"]
    assert shape_diff(ref[0]["params"][0], added, free=FREE) == []
    assert shape_diff(ref[1]["params"][0], finished, free=FREE) == []
    got = srv.get("/server/history/job?uid=000001").json()
    assert shape_diff(reference("jobs_http_history.get_job")["body"], got, free=FREE) == []
    assert got["result"]["job"]["status"] == "completed"


def test_pause_resume_cancel_long_print(srv):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    added = history_events(ws, 1)[0]
    assert added["job"]["status"] == "in_progress"
    job_id = added["job"]["job_id"]
    time.sleep(0.5)
    listed = srv.result("GET", "/server/history/list")
    assert listed["jobs"][0]["job_id"] == job_id
    assert listed["jobs"][0]["status"] == "in_progress"
    ws.call("printer.print.pause")
    wait_state(srv, "paused")
    time.sleep(0.5)
    paused = srv.result("GET", f"/server/history/job?uid={job_id}")["job"]
    assert paused["status"] == "in_progress" and paused["print_duration"] > 0
    ws.call("printer.print.resume")
    wait_state(srv, "printing")
    time.sleep(0.5)
    ws.call("printer.print.cancel")
    finished = history_events(ws, 1)[0]
    assert finished["action"] == "finished"
    job = finished["job"]
    assert job["job_id"] == job_id and job["status"] == "cancelled"
    assert job["print_duration"] > 0 and job["total_duration"] >= job["print_duration"]
    assert job["filament_used"] > 0


def test_error_print(srv):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "bad.gcode"})
    added, finished = history_events(ws, 2)
    assert added["job"]["filename"] == "bad.gcode"
    assert finished["job"]["status"] == "error"


def test_list_filters_and_totals(srv):
    jobs = srv.result("GET", "/server/history/list")
    assert [j["job_id"] for j in jobs["jobs"]] == ["000003", "000002", "000001"]
    assert shape_diff(reference("jobs_http_history.list")["body"],
                      srv.get("/server/history/list").json(), free=FREE) == []
    asc = srv.result("GET", "/server/history/list?limit=1&start=1&order=asc")
    assert asc["count"] == 1 and asc["jobs"][0]["job_id"] == "000002"
    start2 = jobs["jobs"][1]["start_time"]
    since = srv.result("GET", f"/server/history/list?since={start2}")
    assert [j["job_id"] for j in since["jobs"]] == ["000003"]
    before = srv.result("GET", f"/server/history/list?before={start2}")
    assert [j["job_id"] for j in before["jobs"]] == ["000001"]
    bad = srv.get("/server/history/list?order=sideways")
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == reference(
        "jobs_http_history.list.bad_order")["body"]["error"]["message"]
    totals = srv.result("GET", "/server/history/totals")["job_totals"]
    assert totals["total_jobs"] == 3
    durations = [j["total_duration"] for j in jobs["jobs"]]
    assert totals["total_time"] == pytest.approx(sum(durations))
    assert totals["longest_job"] == pytest.approx(max(durations))
    assert totals["total_filament_used"] == pytest.approx(
        sum(j["filament_used"] for j in jobs["jobs"]))
    rpc = srv.ws().call("server.history.list", {"limit": 2, "order": "asc"})
    assert [j["job_id"] for j in rpc["jobs"]] == ["000001", "000002"]


def test_errors_match_reference(srv):
    for fixture, path in [("get_job.unknown", "/server/history/job?uid=0000FF"),
                          ("get_job.missing", "/server/history/job")]:
        ref = reference("jobs_http_history." + fixture)
        resp = srv.get(path)
        assert resp.status_code == ref["status"]
        assert resp.json()["error"]["message"] == ref["body"]["error"]["message"]
    resp = srv.delete("/server/history/job")
    ref = reference("jobs_http_history.delete_job.missing")
    assert (resp.status_code, resp.json()["error"]["message"]) == (
        ref["status"], ref["body"]["error"]["message"])
    reply = srv.ws().request("server.history.get_job", {"uid": "0000FF"})
    assert reply["error"] == reference("jobs_rpc_history.get_job.unknown")["body"]["error"]


def test_exists_follows_the_file(srv, gcodes):
    path = os.path.join(gcodes, SLICED)
    moved = path + ".bak"
    os.rename(path, moved)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not srv.result("GET", "/server/history/job?uid=000001")["job"]["exists"]:
                break
            time.sleep(0.2)
        assert srv.result("GET", "/server/history/job?uid=000001")["job"]["exists"] is False
    finally:
        os.rename(moved, path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if srv.result("GET", "/server/history/job?uid=000001")["job"]["exists"]:
            break
        time.sleep(0.2)
    assert srv.result("GET", "/server/history/job?uid=000001")["job"]["exists"] is True


def test_moonflask_restart_mid_print_keeps_one_job(srv, start_server, printer_data):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    job_id = history_events(ws, 1)[0]["job"]["job_id"]
    ws.call("printer.print.pause")      # keeps the print alive however slow the restart
    wait_state(srv, "paused")
    srv.stop()
    srv2 = start_server(config="[history]\n", data_path=printer_data)
    srv.__dict__.update(srv2.__dict__)   # later tests use the running server
    ws2 = srv2.ws()
    listed = srv2.result("GET", "/server/history/list")
    assert listed["jobs"][0]["job_id"] == job_id
    assert listed["jobs"][0]["status"] == "in_progress"
    assert listed["jobs"][0]["print_duration"] > 0
    ws2.call("printer.print.resume")
    finished = history_events(ws2, 1, timeout=90)[0]
    assert finished["action"] == "finished"
    assert finished["job"]["job_id"] == job_id
    assert finished["job"]["status"] == "completed"
    ids = [j["job_id"] for j in srv2.result("GET", "/server/history/list")["jobs"]]
    assert ids.count(job_id) == 1 and len(ids) == 4
    assert srv2.result("GET", "/server/history/totals")["job_totals"]["total_jobs"] == 4


def test_moonflask_down_while_print_ends(srv, start_server, printer_data):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    job_id = history_events(ws, 1)[0]["job"]["job_id"]
    srv.kill()          # no chance to save anything more
    wait_complete = time.monotonic() + 90
    import sim_printer
    sock = os.path.join(printer_data, "klippy", "klippy.sock")
    while time.monotonic() < wait_complete:
        st = sim_printer.request(sock, "objects/query",
                                 {"objects": {"print_stats": ["state"]}})
        if st["status"]["print_stats"]["state"] == "complete":
            break
        time.sleep(0.3)
    srv2 = start_server(config="[history]\n", data_path=printer_data)
    srv.__dict__.update(srv2.__dict__)
    # The job is settled once Klippy's print_stats reaches the restarted server.
    deadline = time.monotonic() + 10
    while True:
        job = srv2.result("GET", f"/server/history/job?uid={job_id}")["job"]
        if job["status"] != "in_progress" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert job["status"] == "completed"
    ids = [j["job_id"] for j in srv2.result("GET", "/server/history/list")["jobs"]]
    assert ids.count(job_id) == 1


def _history_event(ws, action: str, job_id: str | None = None, timeout: float = 60.0) -> dict:
    """The next notify_history_changed with ``action`` (and ``job_id``); events
    of other jobs (a job the previous test's restart settled) are passed over."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {action} event for {job_id}")
        (event,) = history_events(ws, 1, timeout=left)
        if event["action"] == action and job_id in (None, event["job"]["job_id"]):
            return event


def test_klippy_killed_mid_print(srv, printer):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    added = _history_event(ws, "added")
    assert added["job"]["filename"] == "long.gcode"
    job_id = added["job"]["job_id"]
    time.sleep(0.5)
    printer.kill()
    try:
        finished = _history_event(ws, "finished", job_id)
    finally:
        printer.start()     # the next tests need Klippy, whatever happened here
    assert finished["job"]["status"] == "klippy_disconnected"
    srv.wait_klippy_state("ready")
    ids = [j["job_id"] for j in srv.result("GET", "/server/history/list")["jobs"]]
    assert ids.count(job_id) == 1
    time.sleep(0.5)
    assert srv.result("GET", f"/server/history/job?uid={job_id}")["job"]["status"] == \
        "klippy_disconnected"


def test_delete_and_reset(srv):
    ws = srv.ws()
    assert ws.call("server.history.delete_job", {"uid": "000001"}) == {"deleted_jobs": ["000001"]}
    reply = ws.request("server.history.delete_job", {"uid": "000001"})
    assert reply["error"] == reference("jobs_rpc_history.delete_job.unknown")["body"]["error"]
    before = srv.result("GET", "/server/history/totals")["job_totals"]
    reset = srv.post("/server/history/reset_totals").json()
    assert shape_diff(reference("jobs_http_history.reset_totals")["body"], reset) == []
    assert reset["result"]["last_totals"] == before
    assert srv.result("GET", "/server/history/totals")["job_totals"]["total_jobs"] == 0
    deleted = srv.result("DELETE", "/server/history/job?all=true")["deleted_jobs"]
    assert "000002" in deleted and "000001" not in deleted
    assert srv.result("GET", "/server/history/list") == {"count": 0, "jobs": []}


def test_history_loaded_without_its_section(start_server, printer_data, tmp_path):
    """As Moonraker 0.11.0: history is a default component, [history] or not."""
    other = start_server(config="", data_path=str(tmp_path / "pd"))
    assert other.result("GET", "/server/history/list") == {"count": 0, "jobs": []}
    assert "history" in other.result("GET", "/server/info")["components"]
