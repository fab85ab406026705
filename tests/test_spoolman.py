"""Issue 15: ``[spoolman]`` against the real Spoolman v0.26.1 (started from
../shared/spoolman/start.sh, SQLite in a temp folder), the real Klippy and
real prints.  Reference recordings: tests/reference/spoolman_*.json
(scripts/capture_spoolman.py)."""
from __future__ import annotations

import os
import sys
import tempfile
import time

import pytest
import requests

from helpers import RpcError, free_port
from shapes import reference, shape_diff

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
from spoolman_service import SpoolmanService, start_script  # noqa: E402

if not os.path.exists(start_script()):
    pytest.skip(f"Spoolman not found at {start_script()}", allow_module_level=True)

TOL = 0.01   # mm: the extruder position is a float, Spoolman stores floats


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
    return start_server(config=config(spoolman))


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
