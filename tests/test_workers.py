"""The supervisor: every worker of a running server is killed once (a fault
raised inside its loop through the ``-g`` endpoint ``/debug/workers/fault``);
each must be running again, with the failure in the log, and still doing
its job.  DESIGN.md "Concurrency"; the layout issue's "workers" rule."""
from __future__ import annotations

import os
import time

import pytest

from helpers import RpcError

# A notifier whose apprise URL points at a closed local port: loading it
# starts its task-queue worker; nothing is ever sent in this module.
CONFIG = """
[history]

[notifier quiet]
url: json://127.0.0.1:9/
events: complete
"""

EXPECTED = ("klippy", "proc_stats", "temperature_store", "file_watcher", "metadata",
            "announcements", "history", "notifier_quiet")


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(config=CONFIG, args=["-g"])


def _workers(srv) -> dict:
    return srv.result("GET", "/debug/workers")["workers"]


def _wait(pred, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _log(srv) -> str:
    with open(srv.log_path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _wait_running(srv, names):
    return _wait(lambda: all(_workers(srv).get(n, {}).get("running") for n in names),
                 f"workers {names} running")


def test_every_worker_is_supervised(srv):
    ws = srv.ws()
    ws.call("server.files.metascan", {"filename": _gcode(srv)})   # starts nothing new
    workers = _wait_running(srv, EXPECTED) and _workers(srv)
    for name in EXPECTED:
        assert workers[name] == {"running": True, "restarts": 0, "failures": 0,
                                 "last_error": None}, name


def _gcode(srv) -> str:
    path = os.path.join(srv.data_path, "gcodes", "worker_probe.gcode")
    with open(path, "w") as fh:
        fh.write("; probe\nG28\n")
    return "worker_probe.gcode"


@pytest.mark.parametrize("name", EXPECTED)
def test_fault_restarts_worker(srv, name):
    _wait_running(srv, [name])
    before = _workers(srv)[name]["restarts"]
    answer = srv.result("POST", "/debug/workers/fault", json={"name": name})
    assert answer == {"name": name, "restarts": before}
    after = _wait(lambda: (w := _workers(srv)[name])["restarts"] > before and w["running"]
                  and w, f"{name} restarted")
    assert after["last_error"] == f"WorkerFault: fault injected into {name}"
    assert f"worker {name} failed; restarting" in _log(srv)
    assert f"WorkerFault: fault injected into {name}" in _log(srv)


def test_workers_still_work_after_their_restart(srv):
    """What each restarted loop does is still done."""
    ws = srv.ws()
    # klippy: the connection came back and answers
    srv.wait_klippy_state("ready")
    assert "toolhead" in ws.call("printer.objects.list")["objects"]
    # proc_stats: samples keep coming
    ws.wait_notification("notify_proc_stat_update", timeout=10)
    # file_watcher: a file written by another program is announced
    with open(os.path.join(srv.data_path, "gcodes", "by_hand.gcode"), "w") as fh:
        fh.write("G28\n")
    ws.wait_notification("notify_filelist_changed", timeout=10, predicate=lambda m: m[
        "params"][0]["item"]["path"] == "by_hand.gcode")
    # metadata: a scan is served
    meta = ws.call("server.files.metascan", {"filename": "by_hand.gcode"})
    assert meta["filename"] == "by_hand.gcode"
    # temperature_store: samples are still appended
    first = ws.call("server.temperature_store")["extruder"]["temperatures"]
    _wait(lambda: ws.call("server.temperature_store")["extruder"]["temperatures"] != first,
          "a new temperature sample")
    # history and the notifier: a print is recorded (history's task queue)
    # and its completion handed to the notifier's queue (delivery fails: the
    # port is closed, and says so in the log)
    with open(os.path.join(srv.data_path, "gcodes", "short.gcode"), "w") as fh:
        fh.write("G28\nG1 X10 Y10 F3000\n")
    assert ws.call("printer.print.start", {"filename": "short.gcode"}) == "ok"
    done = ws.wait_notification("notify_history_changed", timeout=60,
                                predicate=lambda m: m["params"][0]["action"] == "finished")
    assert done["params"][0]["job"]["status"] == "completed"
    _wait(lambda: "notifier quiet: complete notification not delivered" in _log(srv),
          "the notifier's attempt", timeout=60)


def test_a_worker_that_keeps_failing_is_reported(srv):
    """Five failures in a row (backoff 0.5, 1, 2, 4 s between them) put a
    warning in server.info; the worker is still restarted."""
    name = "announcements"
    for _ in range(5):
        before = _workers(srv)[name]["restarts"]
        _wait(lambda: _workers(srv)[name]["running"], f"{name} running")
        srv.result("POST", "/debug/workers/fault", json={"name": name})
        _wait(lambda: _workers(srv)[name]["restarts"] > before, f"{name} restarted", 60)
    warnings = srv.result("GET", "/server/info")["warnings"]
    assert any(w.startswith(f"Worker {name} keeps failing: WorkerFault") for w in warnings)
    assert _workers(srv)[name]["running"]


def test_unknown_worker(srv):
    resp = srv.post("/debug/workers/fault", json={"name": "nope"})
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "No worker named nope"


def test_debug_endpoints_absent_without_g(start_server):
    plain = start_server()
    assert plain.get("/debug/workers").status_code == 404
    with pytest.raises(RpcError) as err:
        plain.ws().call("debug.workers")
    assert err.value.code == -32601
