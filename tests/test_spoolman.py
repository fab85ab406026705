"""Issue 15: ``[spoolman]`` against the real Spoolman v0.26.1 (started from
../shared/spoolman/start.sh, SQLite in a temp folder), the real Klippy and
real prints.  Reference recordings: tests/reference/spoolman_*.json
(scripts/capture_spoolman.py)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import pytest

from helpers import REPO, Printer, RpcError, free_port
from shapes import reference, shape_diff

sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "tests", "data"))
from long_gcode import LINES_PER_SECOND, write_long_gcode  # noqa: E402
import sim_printer  # noqa: E402
from spoolman_service import SpoolmanService, start_script  # noqa: E402

START_SCRIPT = start_script()
if not os.path.exists(START_SCRIPT):
    pytest.skip(f"Spoolman not found at {START_SCRIPT}", allow_module_level=True)

TOL = 0.01   # mm: the extruder position is a float, Spoolman stores floats


# configuration.md "Setting the active spool from Klipper"
MACROS = """
[gcode_macro SET_ACTIVE_SPOOL]
gcode:
  {action_call_remote_method("spoolman_set_active_spool", spool_id=params.ID|int)}

[gcode_macro CLEAR_ACTIVE_SPOOL]
gcode:
  {action_call_remote_method("spoolman_set_active_spool", spool_id=None)}
"""


@pytest.fixture(scope="module")
def printer(printer_data):
    """The simulated printer with the two macros of configuration.md added
    to the shared printer.cfg (a copy in printer_data)."""
    shared = os.path.join(printer_data, "shared")
    src = sim_printer.klipper_dir()
    os.makedirs(os.path.join(shared, "klipper"), exist_ok=True)
    shutil.copyfile(os.path.join(src, "klipper.dict"),
                    os.path.join(shared, "klipper", "klipper.dict"))
    with open(os.path.join(src, "printer.cfg")) as fh:
        cfg = fh.read()
    with open(os.path.join(shared, "klipper", "printer.cfg"), "w") as fh:
        fh.write(cfg + MACROS)
    old = os.environ.get("MOONFLASK_SHARED")
    os.environ["MOONFLASK_SHARED"] = shared
    try:
        p = Printer(os.path.join(printer_data, "klippy"), os.path.join(printer_data, "gcodes"))
        p.start()
    finally:
        if old is None:
            os.environ.pop("MOONFLASK_SHARED")
        else:
            os.environ["MOONFLASK_SHARED"] = old
    yield p
    p.stop()


@pytest.fixture(scope="module")
def spoolman():
    with tempfile.TemporaryDirectory(prefix="mf-spm-") as tmp:
        svc = SpoolmanService(tmp, free_port()).start()
        yield svc
        svc.stop()


def config(spoolman, sync_rate: int = 1) -> str:
    return f"[history]\n\n[spoolman]\nserver: {spoolman.url}\nsync_rate: {sync_rate}\n"


@pytest.fixture(scope="module")
def srv(start_server, spoolman):
    # -g: the crash-window test writes the database through /debug/database/item
    return start_server(config=config(spoolman), args=["-g"])


def poll(fn, timeout: float = 30.0, interval: float = 0.1):
    """fn() until it returns a truthy value; its last value otherwise (asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout}s: {value!r}"
            return value
        time.sleep(interval)


def status(srv) -> dict:
    return srv.result("GET", "/server/spoolman/status")


def wait_connected(srv, connected: bool = True) -> dict:
    return poll(lambda: (st := status(srv))["spoolman_connected"] is connected and st, 60)


def set_spool(srv, spool_id) -> None:
    body = {} if spool_id is None else {"spool_id": spool_id}
    assert srv.result("POST", "/server/spoolman/spool_id", json=body) == {"spool_id": spool_id}


def wait_used(spoolman, spool_id: int, expected: float, timeout: float = 30.0) -> float:
    """Poll Spoolman until the spool's used_length is ``expected`` (TOL)."""
    used = poll(lambda: (u := spoolman.used_length(spool_id)) >= expected - TOL and u or
                None, timeout)
    assert abs(used - expected) <= TOL, (used, expected)
    return used


def settle(srv, spoolman, spool_id: int, expected: float) -> None:
    """Nothing pending any more and the spool stays at ``expected``
    for three more sync periods (nothing counted twice)."""
    wait_used(spoolman, spool_id, expected)
    poll(lambda: status(srv)["pending_reports"] == [])
    time.sleep(3.5)   # three sync periods: a duplicate report would show now
    assert abs(spoolman.used_length(spool_id) - expected) <= TOL


def gcode(srv, script: str) -> None:
    assert srv.result("POST", "/printer/gcode/script", json={"script": script}) == "ok"


@pytest.mark.parametrize("section, message", [
    ("[spoolman]\nsync_rate: 5\n", "[spoolman]: No option 'server' in section [spoolman]"),
    ("[spoolman]\nserver: 127.0.0.1:7912\n", "[spoolman]: Invalid server url: 127.0.0.1:7912"),
    ("[spoolman]\nserver: http://127.0.0.1:1\nsync_rate: 0\n", "sync_rate")])
def test_bad_configuration(start_server, tmp_path_factory, section, message):
    other = start_server(config=section, data_path=str(tmp_path_factory.mktemp("bad")),
                         wait_ready=False)
    try:
        info = other.result("GET", "/server/info")
        assert info["failed_components"] == ["spoolman"]
        assert [w for w in info["warnings"] if message in w]
        assert not [w for w in info["warnings"] if "Invalid config option" in w]
        assert other.get("/server/spoolman/status").status_code == 404
    finally:
        other.stop()


# -- status, active spool ---------------------------------------------------
def test_status_connected(srv):
    st = wait_connected(srv)
    assert st == {"spoolman_connected": True, "pending_reports": [], "spool_id": None}
    assert shape_diff(reference("spoolman_status")["body"],
                      srv.get("/server/spoolman/status").json()) == []
    assert "spoolman" in srv.result("GET", "/server/info")["components"]


def test_set_get_active_spool(srv, spoolman):
    spool = spoolman.new_spool("set")
    ws = srv.ws()
    set_spool(srv, spool["id"])
    note = ws.wait_notification("notify_active_spool_set")
    assert note["params"] == [{"spool_id": spool["id"]}]
    assert srv.result("GET", "/server/spoolman/spool_id") == {"spool_id": spool["id"]}
    assert ws.call("server.spoolman.get_spool_id") == {"spool_id": spool["id"]}
    # stored where Moonraker keeps it
    item = srv.result("GET", "/server/database/item?namespace=moonraker&key=spoolman.spool_id")
    assert item["value"] == spool["id"]
    # a bad id: 400, nothing changed
    resp = srv.post("/server/spoolman/spool_id", json={"spool_id": "abc"})
    assert resp.status_code == 400 and "spool_id" in resp.json()["error"]["message"]
    assert srv.result("GET", "/server/spoolman/spool_id") == {"spool_id": spool["id"]}
    # {} clears it, over JSON-RPC too
    assert ws.call("server.spoolman.post_spool_id", {}) == {"spool_id": None}
    note = ws.wait_notification("notify_active_spool_set")
    assert note["params"] == [{"spool_id": None}]
    assert status(srv)["spool_id"] is None
    ref = reference("spoolman_http_spool_id.post")
    assert shape_diff(ref["body"], srv.post("/server/spoolman/spool_id",
                                            json={"spool_id": spool["id"]}).json()) == []
    assert shape_diff(reference("spoolman_notify_active_spool_set")["body"], note) == []
    set_spool(srv, None)


def restart(srv) -> None:
    """Stop moonflask (SIGTERM) and start it again on the same data."""
    srv.stop()
    srv.start()
    srv.wait_klippy_state("ready")


def test_active_spool_restored_after_restart(spoolman, srv):
    spool = spoolman.new_spool("restore")
    set_spool(srv, spool["id"])
    restart(srv)
    assert srv.result("GET", "/server/spoolman/spool_id") == {"spool_id": spool["id"]}
    wait_connected(srv)
    set_spool(srv, None)


# -- proxy -----------------------------------------------------------------------
def proxy(srv, **body):
    return srv.post("/server/spoolman/proxy", json=body)


def test_proxy_get_post_both_versions(srv, spoolman):
    spool = spoolman.new_spool("proxy")
    v1 = proxy(srv, request_method="GET", path=f"/v1/spool/{spool['id']}")
    assert v1.status_code == 200
    assert v1.json()["result"] == spoolman.api("GET", f"/spool/{spool['id']}")
    assert shape_diff(reference("spoolman_proxy_get_v1")["body"], v1.json()) == []
    v2 = proxy(srv, request_method="GET", path="/v1/vendor", use_v2_response=True).json()
    assert shape_diff(reference("spoolman_proxy_get_v2")["body"], v2, free=(
        "$.result.response_headers",)) == []
    res = v2["result"]
    assert res["error"] is None and res["response_headers"]["X-Total-Count"] == str(
        len(res["response"]))
    assert {v["id"] for v in res["response"]} == {
        v["id"] for v in spoolman.api("GET", "/vendor")}
    # a query string is passed on
    made = proxy(srv, request_method="POST", path="/v1/vendor", body={"name": "ProxyCo"})
    assert made.status_code == 200 and made.json()["result"]["name"] == "ProxyCo"
    assert shape_diff(reference("spoolman_proxy_post_v1")["body"], made.json()) == []
    found = proxy(srv, request_method="GET", path="/v1/vendor", query="name=ProxyCo").json()
    assert [v["id"] for v in found["result"]] == [made.json()["result"]["id"]]
    ws = srv.ws()
    made2 = ws.call("server.spoolman.proxy", {"request_method": "POST", "path": "/v1/vendor",
                                              "body": {"name": "Rpc"}, "use_v2_response": True})
    assert made2["error"] is None and made2["response"]["name"] == "Rpc"
    assert spoolman.api("GET", f"/vendor/{made2['response']['id']}")["name"] == "Rpc"
    assert shape_diff(reference("spoolman_proxy_post_v2")["body"]["result"], made2,
                      free=("$.response_headers",)) == []


def test_proxy_errors_passed_through(srv):
    v1 = proxy(srv, request_method="GET", path="/v1/spool/99999")
    ref = reference("spoolman_proxy_404_v1")
    assert (v1.status_code, v1.json()["error"]["message"]) == (
        ref["status"], ref["body"]["error"]["message"])
    ws = srv.ws()
    with pytest.raises(RpcError) as err:
        ws.call("server.spoolman.proxy", {"request_method": "GET", "path": "/v1/spool/99999"})
    assert err.value.code == -32601
    v2 = proxy(srv, request_method="GET", path="/v1/spool/99999", use_v2_response=True)
    assert v2.status_code == 200
    assert v2.json() == reference("spoolman_proxy_404_v2")["body"]
    bad = proxy(srv, request_method="POST", path="/v1/vendor", body={"bad": 1})
    assert bad.status_code == 422
    bad2 = proxy(srv, request_method="POST", path="/v1/vendor", body={"bad": 1},
                 use_v2_response=True).json()["result"]
    assert bad2 == reference("spoolman_proxy_422_v2")["body"]["result"]
    for name, body in [("bad_path", {"request_method": "GET", "path": "/api/v1/vendor"}),
                       ("bad_method", {"request_method": "FOO", "path": "/v1/vendor"}),
                       ("no_path", {"request_method": "GET"})]:
        ref = reference(f"spoolman_proxy_{name}")
        resp = proxy(srv, **body)
        assert (resp.status_code, resp.json()["error"]["message"]) == (
            ref["status"], ref["body"]["error"]["message"]), name


# -- filament usage ------------------------------------------------------------
# net extrusion 15 mm: 5 + 10 - 1 (retract) + 1 (unretract)
SMALL = "G28\nM83\nG1 X10 Y10 F3000\nG1 E5 F300\nG1 X20 E10 F1200\nG1 E-1\nG1 E1\n"


def print_file(srv, printer_data, name: str, text: str | None = None) -> None:
    if text is not None:
        with open(os.path.join(printer_data, "gcodes", name), "w") as fh:
            fh.write(text)
    assert srv.result("POST", "/printer/print/start", json={"filename": name}) == "ok"


def finished_job(srv, filename: str) -> list:
    """``server.history.list?limit=1`` once its job is ``filename`` and finished
    (history may wait for the file's metadata before recording the job)."""
    return poll(lambda: (j := srv.result("GET", "/server/history/list?limit=1")["jobs"])
                and j[0]["filename"] == filename and j[0]["status"] != "in_progress" and j, 30)


def print_state(srv) -> str:
    st = srv.result("GET", "/printer/objects/query?print_stats=state")
    return st["status"]["print_stats"]["state"]


def test_print_books_usage(srv, spoolman, printer_data):
    wait_connected(srv)
    spool = spoolman.new_spool("print")
    set_spool(srv, spool["id"])
    print_file(srv, printer_data, "spool_small.gcode", SMALL)
    settle(srv, spoolman, spool["id"], 15.0)
    ref = reference("spoolman_print_usage")["body"]   # the reference booked the same
    assert abs(ref["after"] - ref["before"] - 15.0) <= TOL
    jobs = finished_job(srv, "spool_small.gcode")
    assert jobs[0]["status"] == "completed"
    ref = reference("spoolman_history_list")["body"]["result"]["jobs"][0]["auxiliary_data"]
    assert jobs[0]["auxiliary_data"] == [dict(ref[0], value=[spool["id"]])]
    # no active spool: nothing booked
    set_spool(srv, None)
    gcode(srv, "M83\nG1 E4 F300")
    time.sleep(2.5)
    assert abs(spoolman.used_length(spool["id"]) - 15.0) <= TOL
    assert status(srv)["pending_reports"] == []


def test_spoolman_stopped_mid_print(srv, spoolman, printer_data):
    wait_connected(srv)
    spool = spoolman.new_spool("outage")
    set_spool(srv, spool["id"])
    ws = srv.ws()
    seconds = 10
    write_long_gcode(os.path.join(printer_data, "gcodes", "spool_long.gcode"), seconds)
    expected = round(int(seconds * LINES_PER_SECOND) * 0.01, 6)
    print_file(srv, printer_data, "spool_long.gcode")
    poll(lambda: spoolman.used_length(spool["id"]) > 0)   # some usage booked while up
    spoolman.stop()
    note = ws.wait_notification("notify_spoolman_status_changed", 30)
    assert note["params"] == [{"spoolman_connected": False}]
    assert print_state(srv) == "printing", "the print ended before Spoolman stopped"
    poll(lambda: print_state(srv) == "complete", 120)
    st = poll(lambda: (s := status(srv))["pending_reports"] and s)
    assert st["spoolman_connected"] is False
    assert [r["spool_id"] for r in st["pending_reports"]] == [spool["id"]]
    assert shape_diff(reference("spoolman_status_disconnected")["body"],
                      srv.get("/server/spoolman/status").json()) == []
    spoolman.start()
    note = ws.wait_notification("notify_spoolman_status_changed", 60)
    assert note["params"] == [{"spoolman_connected": True}]
    settle(srv, spoolman, spool["id"], expected)
    set_spool(srv, None)


def test_restart_with_pending_usage(srv, spoolman):
    wait_connected(srv)
    spool = spoolman.new_spool("restart")
    set_spool(srv, spool["id"])
    spoolman.stop()
    wait_connected(srv, False)
    gcode(srv, "M83\nG1 E20 F600")
    poll(lambda: status(srv)["pending_reports"] == [
        {"spool_id": spool["id"], "filament_used": pytest.approx(20.0, abs=TOL)}])
    restart(srv)
    st = status(srv)
    assert st["spool_id"] == spool["id"] and st["spoolman_connected"] is False
    assert st["pending_reports"] == [
        {"spool_id": spool["id"], "filament_used": pytest.approx(20.0, abs=TOL)}]
    spoolman.start()
    wait_connected(srv)
    settle(srv, spoolman, spool["id"], 20.0)
    set_spool(srv, None)


def write_inflight(srv, record: dict) -> None:
    assert srv.post("/debug/database/item", json={
        "namespace": "moonraker", "key": "spoolman.usage",
        "value": {"pending": {}, "inflight": record}}).status_code == 200


def test_crash_between_put_and_database_update(srv, spoolman):
    """The state a crash leaves between the PUT and the database update:
    an in-flight record.  Booked by Spoolman: not sent again; not booked:
    sent once."""
    wait_connected(srv)
    spool = spoolman.new_spool("crash")
    sid = spool["id"]
    # the PUT reached Spoolman, then moonflask died
    spoolman.api("PUT", f"/spool/{sid}/use", {"use_length": 7.0})
    write_inflight(srv, {"spool_id": sid, "use_length": 7.0, "used_before": 0.0})
    restart(srv)
    wait_connected(srv)
    poll(lambda: srv.result("GET", "/debug/database/item?namespace=moonraker"
                            "&key=spoolman.usage")["value"] == {"pending": {}})
    time.sleep(2.5)
    assert abs(spoolman.used_length(sid) - 7.0) <= TOL
    # moonflask died before its PUT was sent
    write_inflight(srv, {"spool_id": sid, "use_length": 5.0, "used_before": 7.0})
    restart(srv)
    wait_connected(srv)
    settle(srv, spoolman, sid, 12.0)


def test_active_spool_deleted_in_spoolman(srv, spoolman):
    wait_connected(srv)
    spool = spoolman.new_spool("deleted")
    set_spool(srv, spool["id"])
    ws = srv.ws()
    spoolman.api("DELETE", f"/spool/{spool['id']}")
    note = ws.wait_notification("notify_active_spool_set", 15)
    assert note["params"] == [{"spool_id": None}]
    assert srv.result("GET", "/server/spoolman/spool_id") == {"spool_id": None}


def test_unknown_active_spool_cleared_on_connect(srv, spoolman):
    wait_connected(srv)
    set_spool(srv, 99999)   # accepted, as the reference does
    spoolman.stop()
    wait_connected(srv, False)
    spoolman.start()
    poll(lambda: srv.result("GET", "/server/spoolman/spool_id") == {"spool_id": None}, 60)


def test_remote_method_switches_spool_mid_print(srv, spoolman, printer_data):
    """``spoolman_set_active_spool`` from a macro; usage goes to the spool
    active at the time, the job lists both spools."""
    wait_connected(srv)
    first, second = spoolman.new_spool("first"), spoolman.new_spool("second")
    ws = srv.ws()
    gcode(srv, f"SET_ACTIVE_SPOOL ID={first['id']}")
    note = ws.wait_notification("notify_active_spool_set")
    assert note["params"] == [{"spool_id": first["id"]}]
    seconds = 8
    write_long_gcode(os.path.join(printer_data, "gcodes", "spool_switch.gcode"), seconds)
    expected = round(int(seconds * LINES_PER_SECOND) * 0.01, 6)
    print_file(srv, printer_data, "spool_switch.gcode")
    poll(lambda: spoolman.used_length(first["id"]) > 0)
    gcode(srv, f"SET_ACTIVE_SPOOL ID={second['id']}")
    assert print_state(srv) == "printing", "the print ended before the switch"
    poll(lambda: print_state(srv) == "complete", 120)
    poll(lambda: status(srv)["pending_reports"] == [])
    time.sleep(2.5)
    used = [spoolman.used_length(first["id"]), spoolman.used_length(second["id"])]
    assert used[0] > 0 and used[1] > 0 and abs(sum(used) - expected) <= TOL, used
    jobs = finished_job(srv, "spool_switch.gcode")
    assert jobs[0]["auxiliary_data"][0]["value"] == [first["id"], second["id"]]
    gcode(srv, "CLEAR_ACTIVE_SPOOL")
    poll(lambda: srv.result("GET", "/server/spoolman/spool_id") == {"spool_id": None}, 10)


def test_print_right_after_klippy_restart(srv, spoolman, printer, printer_data):
    """Klippy restarts with its extruder position at 0: no negative usage,
    and a print started as soon as klippy_state is ready is counted."""
    wait_connected(srv)
    spool = spoolman.new_spool("klippy_restart")
    set_spool(srv, spool["id"])
    gcode(srv, "M83\nG1 E30 F600")
    wait_used(spoolman, spool["id"], 30.0)
    printer.stop()
    srv.wait_klippy_state("disconnected")
    printer.start()
    srv.wait_klippy_state("ready")
    print_file(srv, printer_data, "spool_restart.gcode", SMALL)
    settle(srv, spoolman, spool["id"], 45.0)
    set_spool(srv, None)
