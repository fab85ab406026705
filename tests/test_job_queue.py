"""Issue 5: the job queue on the real (simulated) Klippy."""
from __future__ import annotations

import os
import sys
import time

import pytest
import requests

from shapes import reference, shape_diff

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402

CONFIG = """[history]
[job_queue]
load_on_startup: False
automatic_transition: True
job_transition_delay: 0.3
job_transition_gcode:
  M118 transition
[file_manager]
queue_gcode_uploads: True
"""


@pytest.fixture(scope="module")
def srv(start_server, printer_data):
    gcodes = os.path.join(printer_data, "gcodes")
    for name in ("a.gcode", "b.gcode", "c.gcode"):
        write_long_gcode(os.path.join(gcodes, name), 1)
    write_long_gcode(os.path.join(gcodes, "long.gcode"), 8)
    return start_server(config=CONFIG)


def queue_events(ws, until, timeout=90.0):
    """Collect notify_job_queue_changed / notify_history_changed until
    ``until(events)`` is true."""
    events = []
    deadline = time.monotonic() + timeout
    while not until(events):
        left = deadline - time.monotonic()
        assert left > 0, events
        msg = ws.notifications.get(timeout=left)
        if msg["method"] in ("notify_job_queue_changed", "notify_history_changed"):
            events.append((msg["method"], msg["params"][0]))
    return events


def test_status_shape(srv):
    got = srv.get("/server/job_queue/status").json()
    assert shape_diff(reference("jobs_http_job_queue.status")["body"], got) == []
    assert got["result"] == {"queued_jobs": [], "queue_state": "paused"}


def test_start_or_clear_empty_paused_queue_as_reference(srv):
    """Issue 10 item 8: starting an empty, paused queue leaves it paused and
    sends nothing; clearing an empty queue neither (queue_start_empty_paused,
    queue_delete_all_empty).  The next notification the client receives is
    the one of the next real change."""
    ws = srv.ws()
    for name, method, params in (
            ("queue_start_empty_paused", "server.job_queue.start", None),
            ("queue_status_after_start", "server.job_queue.status", None),
            ("queue_delete_all_empty", "server.job_queue.delete_job", {"all": True})):
        ref = reference(name)
        assert ref["notifications"] == []
        assert ws.call(method, params) == ref["body"]["result"] == {
            "queued_jobs": [], "queue_state": "paused"}
    added = ws.call("server.job_queue.post_job", {"filenames": ["a.gcode"]})
    first = ws.wait_notification("notify_job_queue_changed")["params"][0]
    assert first["action"] == "jobs_added" and first["queue_state"] == "paused"
    ws.call("server.job_queue.delete_job", {"job_ids": [added["queued_jobs"][0]["job_id"]]})
    assert ws.wait_notification("notify_job_queue_changed")["params"][0]["action"] == \
        "jobs_removed"
    assert ws.call("server.job_queue.status")["queue_state"] == "paused"


def test_job_loaded_pauses_without_automatic_transition(start_server, tmp_root, printer_data):
    """Spec configuration.md [job_queue]: automatic_transition defaults to
    False, and then the queue pauses once a job is loaded (as the
    reference's server.config and job_loaded notification show)."""
    ref = reference("config_server_config_minimal")["body"]["result"]["config"]["job_queue"]
    data = os.path.join(tmp_root, "queue_default")
    os.makedirs(data, exist_ok=True)
    if not os.path.exists(os.path.join(data, "gcodes")):
        os.symlink(os.path.join(printer_data, "gcodes"), os.path.join(data, "gcodes"))
    other = start_server(data_path=data)
    assert other.result("GET", "/server/config")["config"]["job_queue"] == ref
    ws = other.ws()
    ws.call("server.job_queue.post_job", {"filenames": ["a.gcode"]})
    ws.call("server.job_queue.start")
    loaded = ws.wait_notification("notify_job_queue_changed", timeout=60,
                                  predicate=lambda m: m["params"][0]["action"] == "job_loaded")
    assert loaded["params"][0]["queue_state"] == "paused"
    assert ws.call("server.job_queue.status")["queue_state"] == "paused"
    ws.request("printer.print.cancel")   # an error if it has finished already
    deadline = time.monotonic() + 60
    while other.result("GET", "/printer/objects/query?print_stats=state")["status"][
            "print_stats"]["state"] == "printing":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    other.stop()


def test_enqueue_jump_remove(srv):
    ws = srv.ws()
    res = srv.post("/server/job_queue/job?filenames=a.gcode,b.gcode").json()
    ref = reference("jobs_http_job_queue.post_job")
    assert shape_diff(ref["body"], res) == []
    jobs = res["result"]["queued_jobs"]
    assert [j["filename"] for j in jobs] == ["a.gcode", "b.gcode"]
    assert all(len(j["job_id"]) == 16 for j in jobs)
    note = ws.wait_notification("notify_job_queue_changed")
    assert shape_diff(ref["notifications"][0], note) == []
    assert note["params"][0]["action"] == "jobs_added"
    res = ws.call("server.job_queue.post_job", {"filenames": ["c.gcode"], "reset": False})
    ids = [j["job_id"] for j in res["queued_jobs"]]
    assert ws.call("server.job_queue.jump", {"job_id": ids[2]})["queued_jobs"][0]["filename"] \
        == "c.gcode"
    err = ws.request("server.job_queue.jump", {"job_id": "DEADBEEF"})["error"]
    assert err == reference("jobs_rpc_job_queue.jump.unknown")["body"]["error"]
    res = srv.result("DELETE", f"/server/job_queue/job?job_ids={ids[1]},NOPE")
    assert [j["filename"] for j in res["queued_jobs"]] == ["c.gcode", "a.gcode"]
    for fixture, method, path in [
            ("post_job.missing_file", "POST", "/server/job_queue/job?filenames=nope.gcode"),
            ("post_job.no_args", "POST", "/server/job_queue/job"),
            ("delete_job.missing", "DELETE", "/server/job_queue/job")]:
        ref = reference("jobs_http_job_queue." + fixture)
        resp = requests.request(method, srv.url + path, timeout=10)
        assert resp.status_code == ref["status"]
        assert resp.json()["error"]["message"] == ref["body"]["error"]["message"]
    bad = srv.post("/server/job_queue/job?filenames=a.gcode,../../etc/passwd")
    assert bad.status_code == 400
    assert len(srv.result("GET", "/server/job_queue/status")["queued_jobs"]) == 2
    assert srv.result("DELETE", "/server/job_queue/job?all=true")["queued_jobs"] == []


def test_three_jobs_with_automatic_transition(srv):
    ws = srv.ws()
    ws.call("server.job_queue.post_job",
            {"filenames": ["a.gcode", "b.gcode", "c.gcode"], "reset": True})
    ws.drain()
    res = ws.call("server.job_queue.start")
    assert res["queue_state"] == "loading"
    ref = reference("jobs_job_queue_run_notifications")["notifications"]

    def done(events):
        return sum(1 for m, p in events if m == "notify_history_changed"
                   and p["action"] == "finished") == 3
    events = queue_events(ws, done)
    queue = [p for m, p in events if m == "notify_job_queue_changed"]
    states = [p["queue_state"] if p["action"] == "state_changed" else p["action"]
              for p in queue]
    assert states == ["loading", "starting", "job_loaded"] * 3, states
    assert shape_diff(ref[0], {"jsonrpc": "2.0", "method": "notify_job_queue_changed",
                               "params": [queue[0]]}) == []
    loaded = [p for p in queue if p["action"] == "job_loaded"]
    assert [len(p["updated_queue"]) for p in loaded] == [2, 1, 0]
    finished = [p["job"] for m, p in events if m == "notify_history_changed"
                and p["action"] == "finished"]
    assert [j["filename"] for j in finished] == ["a.gcode", "b.gcode", "c.gcode"]
    assert all(j["status"] == "completed" for j in finished)
    assert srv.result("GET", "/server/job_queue/status") == {"queued_jobs": [],
                                                              "queue_state": "ready"}
    store = srv.result("GET", "/server/gcode_store")["gcode_store"]
    assert sum(1 for g in store if "transition" in g["message"]) >= 3


def test_pause_stops_transition_and_upload_is_queued(srv):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    ws.wait_notification("notify_history_changed")
    resp = srv.post("/server/files/upload", files={"file": ("up.gcode", b"G28\nM118 up\n")},
                    data={"print": "true"})
    assert resp.status_code == 201
    body = resp.json()
    assert body["print_queued"] is True and body["print_started"] is False
    status = srv.result("GET", "/server/job_queue/status")
    assert [j["filename"] for j in status["queued_jobs"]] == ["up.gcode"]
    paused = ws.call("server.job_queue.pause")
    assert paused["queue_state"] == "paused"
    ws.call("printer.print.cancel")
    time.sleep(2)
    status = srv.result("GET", "/server/job_queue/status")
    assert status["queue_state"] == "paused" and len(status["queued_jobs"]) == 1


def test_queue_survives_restart_and_loads_on_startup(srv, start_server, printer_data):
    srv.stop()
    srv2 = start_server(config=CONFIG, data_path=printer_data)
    status = srv2.result("GET", "/server/job_queue/status")
    assert [j["filename"] for j in status["queued_jobs"]] == ["up.gcode"]
    assert status["queue_state"] == "paused"
    srv2.stop()
    # load_on_startup: the queue is ready at start and loads its first job
    cfg = CONFIG.replace("load_on_startup: False", "load_on_startup: True")
    srv3 = start_server(config=cfg, data_path=printer_data, wait_ready=False)
    ws = srv3.ws()
    finished = queue_events(ws, lambda ev: any(
        m == "notify_history_changed" and p["action"] == "finished" for m, p in ev))
    job = [p["job"] for m, p in finished if m == "notify_history_changed"][-1]
    assert job["filename"] == "up.gcode" and job["status"] == "completed"
    assert srv3.result("GET", "/server/job_queue/status") == {"queued_jobs": [],
                                                               "queue_state": "ready"}
