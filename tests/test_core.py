"""Issue 2: the core server on a real Klippy, over HTTP, websocket and unix socket."""
from __future__ import annotations

import json
import socket
import time

import pytest
import requests
import websocket

from helpers import RpcError, WsClient
from shapes import reference, shape_diff

# Paths whose dict keys are data, not schema.
FREE = ("$.result.status", "$.result", "$.result.gcode_store[0]")


def test_server_info_over_every_transport(server):
    http = server.get("/server/info").json()["result"]
    ws = server.ws().call("server.info")
    unix = server.unix().call("server.info")
    rpc_http = server.post("/server/jsonrpc", json={
        "jsonrpc": "2.0", "method": "server.info", "id": 7}).json()
    for info in (http, ws, unix, rpc_http["result"]):
        assert info["klippy_connected"] is True
        assert info["klippy_state"] == "ready"
        assert info["api_version"] == [1, 5, 0]
        assert info["api_version_string"] == "1.5.0"
    assert rpc_http["id"] == 7
    assert shape_diff(reference("http_server.info")["body"], {"result": http}) == []


@pytest.mark.parametrize("fixture,method,path,params", [
    ("server.info", "GET", "/server/info", None),
    ("server.config", "GET", "/server/config", None),
    ("printer.info", "GET", "/printer/info", None),
    ("printer.objects.list", "GET", "/printer/objects/list", None),
    ("printer.query_endstops.status", "GET", "/printer/query_endstops/status", None),
    ("printer.gcode.help", "GET", "/printer/gcode/help", None),
    ("server.gcode_store", "GET", "/server/gcode_store", None),
    ("server.temperature_store", "GET", "/server/temperature_store", None),
    ("server.logs.rollover", "POST", "/server/logs/rollover", None),
])
def test_response_shapes_match_reference(server, fixture, method, path, params):
    ref = reference("http_" + fixture)
    resp = requests.request(method, server.url + path, params=params, timeout=10)
    assert resp.status_code == ref["status"]
    assert resp.headers["Content-Type"].startswith("application/json")
    free = FREE if fixture in ("printer.gcode.help", "server.temperature_store") else (
        "$.result.config", "$.result.orig", "$.result.status")
    if fixture == "server.config":  # `orig` echoes what each config file says
        free += tuple(f"$.result.orig.{name}" for name in ref["body"]["result"]["orig"])
    assert shape_diff(ref["body"], resp.json(), free=free) == [], resp.text[:500]
    rpc_ref = reference("rpc_" + fixture)["body"]
    reply = server.ws().request(fixture, params or {})
    assert shape_diff(rpc_ref, {**reply, "id": rpc_ref["id"]}, free=free) == []


def test_objects_query_http_form_and_json(server):
    res = server.result("GET", "/printer/objects/query?toolhead=position,homed_axes&webhooks")
    assert set(res) == {"eventtime", "status"}
    assert set(res["status"]["toolhead"]) == {"position", "homed_axes"}
    assert res["status"]["webhooks"]["state"] == "ready"
    res = server.result("POST", "/printer/objects/query",
                        json={"objects": {"extruder": ["target"], "nonexistent": None}})
    assert res["status"] == {"extruder": {"target": 0.0}, "nonexistent": {}}


def test_two_clients_receive_only_their_own_fields(server):
    a, b = server.ws(), server.ws()
    ra = a.call("printer.objects.subscribe",
                {"objects": {"toolhead": ["homed_axes"], "gcode_move": ["speed_factor"]}})
    rb = b.call("printer.objects.subscribe", {"objects": {"extruder": ["target"]}})
    assert set(ra["status"]) == {"toolhead", "gcode_move"}
    assert set(ra["status"]["toolhead"]) == {"homed_axes"}
    assert rb["status"] == {"extruder": {"target": 0.0}}
    server.result("POST", "/printer/gcode/script", json={"script": "G28\nM220 S150\nM104 S60"})
    got_a, got_b = {}, {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (
            got_a.get("toolhead") and got_a.get("gcode_move") and got_b.get("extruder")):
        time.sleep(0.1)
        for client, got in ((a, got_a), (b, got_b)):
            for msg in client.drain():
                if msg["method"] == "notify_status_update":
                    status, eventtime = msg["params"]
                    assert isinstance(eventtime, float)
                    for obj, fields in status.items():
                        got.setdefault(obj, {}).update(fields)
    assert set(got_a) <= {"toolhead", "gcode_move"}, got_a
    assert got_a["toolhead"] == {"homed_axes": "xyz"}
    assert got_a["gcode_move"] == {"speed_factor": 1.5}
    assert got_b == {"extruder": {"target": 60.0}}
    # Re-subscribing replaces; {} cancels.
    assert b.call("printer.objects.subscribe", {"objects": {}})["status"] == {}
    server.result("POST", "/printer/gcode/script", json={"script": "M104 S0\nM220 S100"})
    time.sleep(0.8)
    assert not [m for m in b.drain() if m["method"] == "notify_status_update"]
    server.result("POST", "/printer/gcode/script", json={"script": "M84"})


def test_http_subscription_with_connection_id(server):
    client = server.ws()
    uid = client.call("server.connection.identify", {
        "client_name": "test", "version": "1", "type": "web", "url": "http://x"})["connection_id"]
    assert client.call("server.websocket.id") == {"websocket_id": uid}
    res = server.result("POST", f"/printer/objects/subscribe?connection_id={uid}&webhooks=state")
    assert res["status"] == {"webhooks": {"state": "ready"}}
    resp = server.post("/printer/objects/subscribe?connection_id=12345&webhooks")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "No connection associated with subscription request"


def test_identify_rules(server):
    client = server.ws()
    with pytest.raises(RpcError) as err:
        client.call("server.connection.identify", {"client_name": "x", "version": "1",
                                                   "type": "bogus", "url": "u"})
    assert err.value.code == 400 and "Invalid Client Type: bogus" in err.value.message
    with pytest.raises(RpcError) as err:
        client.call("server.connection.identify", {"client_name": "x", "type": "web"})
    assert err.value.message == "No data for argument: version"
    client.call("server.connection.identify", {"client_name": "x", "version": "1",
                                               "type": "web", "url": "u"})
    with pytest.raises(RpcError) as err:
        client.call("server.connection.identify", {"client_name": "x", "version": "1",
                                                   "type": "web", "url": "u"})
    assert err.value.message.startswith("Connection already identified")
    # Not available over HTTP.
    assert server.post("/server/connection/identify").status_code == 404
    reply = server.post("/server/jsonrpc", json={"jsonrpc": "2.0", "id": 1,
                                                 "method": "server.websocket.id"}).json()
    assert reply["error"]["code"] == -32601


def test_gcode_script_and_responses(server):
    client = server.ws()
    assert client.call("printer.gcode.script", {"script": "M118 hello moonflask"}) == "ok"
    msg = client.wait_notification("notify_gcode_response")
    assert msg == {"jsonrpc": "2.0", "method": "notify_gcode_response",
                   "params": ["// hello moonflask"]}
    store = server.result("GET", "/server/gcode_store?count=2")["gcode_store"]
    assert [e["type"] for e in store] == ["command", "response"]
    assert store[0]["message"] == "M118 hello moonflask"
    assert store[1]["message"] == "// hello moonflask"
    assert isinstance(store[1]["time"], float)
    # A Klippy error is a 400 with Klippy's message, and an "!!" response.
    resp = server.post("/printer/gcode/script", json={"script": "G1 X9999"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("Must home axis first") or \
        resp.json()["error"]["message"].startswith("Move out of range")
    resp = server.post("/printer/gcode/script")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "Missing Argument [script]"
    # Body wins over query.
    server.result("POST", "/printer/gcode/script?script=M118%20from_query",
                  json={"script": "M118 from_body"})
    assert client.wait_notification("notify_gcode_response",
                                    predicate=lambda m: "from_" in m["params"][0])["params"] == \
        ["// from_body"]


def test_print_management_when_idle(server):
    resp = server.post("/printer/print/start", json={"filename": "missing.gcode"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "Unable to open file"
    resp = server.post("/printer/print/start")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "No data for argument: filename"
    server.result("POST", "/printer/gcode/script", json={"script": "G28"})
    for action in ("pause", "resume"):
        assert server.result("POST", f"/printer/print/{action}") == "ok"


def test_wrong_argument_types(server):
    for query in ("count=abc", "count:int=12x", "count=2.5"):
        resp = server.get("/server/gcode_store?" + query)
        assert resp.status_code == 400, query
        assert resp.json()["error"] == {
            "code": 400, "message": "Unable to convert argument [count] to <class 'int'>: "
            f"value received: {query.split('=')[1]}"}
    resp = server.get("/server/temperature_store?include_monitors=maybe")
    assert resp.status_code == 400
    assert "include_monitors" in resp.json()["error"]["message"]
    assert server.get("/server/gcode_store?count:int=3").status_code == 200
    with pytest.raises(RpcError) as err:
        server.ws().call("server.gcode_store", {"count": "abc"})
    assert err.value.code == 400
    assert server.ws().call("server.gcode_store", {"count": "2"})["gcode_store"] is not None
    with pytest.raises(RpcError) as err:
        server.ws().call("printer.objects.query", {"objects": ["toolhead"]})
    assert err.value.message == "Invalid Argument Type [objects]"


def test_unknown_routes_and_verbs(server):
    resp = server.get("/server/does_not_exist")
    assert resp.status_code == 404
    assert resp.json() == {"error": {"code": 404, "message": "Not Found"}}
    resp = server.delete("/server/info")
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == 405
    assert server.post("/printer/info").status_code == 200


@pytest.mark.parametrize("transport", ["websocket", "unix"])
def test_malformed_jsonrpc(server, transport):
    if transport == "websocket":
        client = server.ws()
        send, recv_id = client.send_raw, client.reply_for
    else:
        client = server.unix()

        def send(text: str) -> None:
            client.send_raw(text.encode() + b"\x03")

        def recv_id(_req_id):
            return client.recv()
    cases = [
        ("{not json", {"code": -32700, "message": "Parse error"}, None),
        (json.dumps({"method": "server.info", "id": 11}), {"code": -32600}, 11),
        (json.dumps({"jsonrpc": "2.0", "method": 5, "id": 12}), {"code": -32600}, 12),
        (json.dumps({"jsonrpc": "2.0", "method": "server.info", "params": [1], "id": 13}),
         {"code": -32602}, 13),
        (json.dumps({"jsonrpc": "2.0", "method": "no.such.method", "id": 14}),
         {"code": -32601, "message": "Method not found"}, 14),
    ]
    for text, error, req_id in cases:
        send(text)
        reply = recv_id(req_id)
        assert reply["id"] == req_id, (text, reply)
        for key, value in error.items():
            assert reply["error"][key] == value, (text, reply)
    # A notification (no id) gets no reply: the next reply is for the next request.
    send(json.dumps({"jsonrpc": "2.0", "method": "server.info"}))
    send(json.dumps({"jsonrpc": "2.0", "method": "server.websocket.id", "id": 21}))
    reply = recv_id(21)
    assert reply["id"] == 21 and "websocket_id" in reply["result"]
    # Batches.
    send(json.dumps([{"jsonrpc": "2.0", "method": "server.info", "id": 31},
                     {"jsonrpc": "2.0", "method": "nope", "id": 32},
                     {"jsonrpc": "2.0", "method": "server.info"},
                     {"foo": "bar"}]))
    batch = recv_id(31)
    assert [r.get("id") for r in batch] == [31, 32, None]
    assert "result" in batch[0] and batch[1]["error"]["code"] == -32601
    assert batch[2]["error"]["code"] == -32600


def test_jsonrpc_over_http(server):
    url = server.url + "/server/jsonrpc"
    resp = requests.post(url, data="{bad", timeout=5)
    assert resp.status_code == 200
    assert resp.json() == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"},
                           "id": None}
    resp = requests.post(url, json={"jsonrpc": "2.0", "method": "printer.info", "id": 5},
                         timeout=5)
    assert resp.status_code == 200 and resp.json()["result"]["state"] == "ready"
    resp = requests.post(url, json={"jsonrpc": "2.0", "method": "printer.info"}, timeout=5)
    assert resp.status_code == 200 and resp.text == ""


def test_cross_origin_websocket_upgrade(server):
    # Firefox's header, from a front end served on another port of a trusted
    # host (Fluidd on :8080): accepted, as by the reference.
    client = WsClient(server.ws_url, headers=["Connection: keep-alive, Upgrade"],
                      origin="http://127.0.0.1:8080")
    try:
        assert client.call("server.info")["klippy_state"] == "ready"
    finally:
        client.close()
    # a page on a host that is not trusted (and no cors_domains): refused,
    # as by the reference
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        WsClient(server.ws_url, headers=["Connection: keep-alive, Upgrade"],
                 origin="http://192.168.1.20:8080")
    assert err.value.status_code == 403


def test_slow_client_does_not_stall_others(server):
    slow = websocket.create_connection(
        server.ws_url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    fast = server.ws()
    count_before = server.get("/server/info").json()["result"]["websocket_count"]
    line = "M118 " + "x" * 3000
    batches, per_batch = 60, 100     # 18 MB: more than the 8 MiB queue + kernel buffers
    for _ in range(batches):
        server.result("POST", "/printer/gcode/script",
                      json={"script": "\n".join([line] * per_batch)}, timeout=60)
        received = 0
        while received < per_batch:  # the fast client gets every message, batch by batch
            msg = fast.notifications.get(timeout=10)
            received += msg["method"] == "notify_gcode_response"
    # The slow client fell more than the queue behind: it was closed, the rest lives on.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        count = server.get("/server/info").json()["result"]["websocket_count"]
        if count == count_before - 1:
            break
        time.sleep(0.2)
    assert count == count_before - 1
    assert fast.call("server.info")["klippy_state"] == "ready"
    slow.close()


def test_max_websocket_connections(start_server, printer_data, tmp_root):
    import os
    srv = start_server(server_options="max_websocket_connections: 2",
                       data_path=os.path.join(tmp_root, "maxws"))
    a, b = srv.ws(), srv.ws()
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(srv.ws_url, timeout=5)
    assert err.value.status_code == 503
    a.close()
    time.sleep(0.3)
    c = srv.ws()
    assert c.call("server.info")["websocket_count"] == 2
    b.close()


def test_temperature_store_samples(server):
    time.sleep(2.5)
    store = server.result("GET", "/server/temperature_store")
    assert set(store) == {"extruder", "heater_bed"}
    for sensor in store.values():
        assert set(sensor) == {"temperatures", "targets", "powers"}
        assert len(sensor["temperatures"]) >= 2
        assert all(isinstance(v, float) for v in sensor["temperatures"])


def test_log_file_and_rollover(server):
    import os
    logs = os.path.join(server.data_path, "logs")
    res = server.result("POST", "/server/logs/rollover", json={"application": "moonraker"})
    assert res == {"rolled_over": ["moonraker"], "failed": {}}
    names = os.listdir(logs)
    assert "moonraker.log" in names and any(n.startswith("moonraker.log.") for n in names)
    # What the server logged since it started is kept in the log files.
    text = "".join(open(os.path.join(logs, n)).read() for n in names if n.startswith("moonraker"))
    assert "listening on" in text and "Klippy ready" in text
    resp = server.post("/server/logs/rollover", json={"application": "bogus"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "Unknown application bogus"
