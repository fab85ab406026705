"""Issue 5: agents, extensions and the bridge websocket."""
from __future__ import annotations

import json
import threading
import time

import pytest
import websocket

from helpers import WsClient
from shapes import reference

AGENT = {"client_name": "moonagent", "version": "0.0.1", "type": "agent",
         "url": "https://example.com/agent"}


class Agent(WsClient):
    """A websocket agent: answers every request with ``{"echo": params}``
    and records the notifications (remote method calls) it receives."""

    def _reader(self) -> None:
        try:
            while True:
                text = self.ws.recv()
                if not text:
                    break
                msg = json.loads(text)
                if "method" in msg and "id" in msg:
                    if msg["method"] == "agent.fail":
                        self.ws.send(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                                 "error": {"code": 418, "message": "nope"}}))
                    else:
                        self.ws.send(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                                 "result": {"echo": msg.get("params")}}))
                elif "method" in msg:
                    self.notifications.put(msg)
                else:
                    with self._lock:
                        q = self._replies.setdefault(msg.get("id"), __import__("queue").Queue())
                    q.put(msg)
        except Exception:
            pass
        finally:
            self.closed.set()


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server()


def test_agent_lifecycle_and_relay(srv):
    ws = srv.ws()
    assert srv.result("GET", "/server/extensions/list") == {"agents": []}
    agent = Agent(srv.ws_url)
    srv._clients.append(agent)
    agent.call("server.connection.identify", AGENT)
    note = ws.wait_notification("notify_agent_event")
    assert note == reference("jobs_agent_identify")["notifications"][0]
    assert srv.result("GET", "/server/extensions/list") == \
        reference("jobs_http_extensions.list")["body"]["result"]
    assert ws.call("server.extensions.request", {
        "agent": "moonagent", "method": "moontest.hello", "arguments": {"a": 1}}) == \
        {"echo": {"a": 1}}
    assert ws.call("server.extensions.request", {
        "agent": "moonagent", "method": "x", "arguments": [1, 2]}) == {"echo": [1, 2]}
    assert ws.call("server.extensions.request", {"agent": "moonagent", "method": "x"}) == \
        {"echo": None}
    http = srv.post("/server/extensions/request", json={
        "agent": "moonagent", "method": "x", "arguments": {"b": 2}})
    assert http.json() == reference("jobs_http_extensions.request")["body"]
    err = ws.request("server.extensions.request", {"agent": "nope", "method": "x"})["error"]
    assert err == reference("jobs_rpc_extensions.request.unknown_agent")["body"]["error"]
    err = ws.request("server.extensions.request", {"agent": "moonagent",
                                                   "method": "agent.fail"})["error"]
    assert err == {"code": 418, "message": "nope"}
    # concurrent relays are matched to their own replies
    results = {}

    def relay(i):
        results[i] = srv.ws().call("server.extensions.request", {
            "agent": "moonagent", "method": "m", "arguments": {"i": i}})
    threads = [threading.Thread(target=relay, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: {"echo": {"i": i}} for i in range(10)}

    # events
    assert agent.call("connection.send_event", {"event": "my_event", "data": {"x": 1}}) == "ok"
    assert ws.wait_notification("notify_agent_event") == \
        reference("jobs_agent_send_event")["notifications"][0]
    agent.call("connection.send_event", {"event": "no_data"})
    assert ws.wait_notification("notify_agent_event") == \
        reference("jobs_agent_send_event.no_data")["notifications"][0]
    reply = agent.request("connection.send_event", {"event": "connected"})
    assert reply["error"] == reference("jobs_agent_send_event.reserved")["body"]["error"]
    for fixture, method, params in [
            ("send_event.not_agent", "connection.send_event", {"event": "x"}),
            ("register_remote_method.not_agent", "connection.register_remote_method",
             {"method_name": "moonraker_test"})]:
        reply = ws.request(method, params)
        assert reply["error"] == reference("jobs_rpc_" + fixture)["body"]["error"]
    assert srv.post("/server/jsonrpc", json={"jsonrpc": "2.0", "method": "connection.send_event",
                                             "params": {"event": "x"}, "id": 1}
                    ).json()["error"]["code"] == -32601

    # remote method called by the TEST_REMOTE_METHOD macro
    assert agent.call("connection.register_remote_method",
                      {"method_name": "moonraker_test"}) == "ok"
    reply = agent.request("connection.register_remote_method", {"method_name": "moonraker_test"})
    assert reply["error"] == \
        reference("jobs_agent_register_remote_method.again")["body"]["error"]
    assert ws.call("printer.gcode.script", {"script": "TEST_REMOTE_METHOD"}) == "ok"
    call = agent.wait_notification("moonraker_test", timeout=10)
    assert call == reference("jobs_agent_remote_method_call")["notifications"][0]

    # one agent per name
    dup = Agent(srv.ws_url)
    srv._clients.append(dup)
    reply = dup.request("server.connection.identify", AGENT)
    assert reply["error"]["code"] == 400 and "moonagent" in reply["error"]["message"]
    dup.close()

    # disconnect
    agent.close()
    assert ws.wait_notification("notify_agent_event", predicate=lambda m: m["params"][0][
        "event"] == "disconnected") == reference("jobs_agent_disconnect")["notifications"][0]
    assert srv.result("GET", "/server/extensions/list") == {"agents": []}
    # a new agent may register the same remote method again
    agent2 = Agent(srv.ws_url)
    srv._clients.append(agent2)
    agent2.call("server.connection.identify", AGENT)
    assert agent2.call("connection.register_remote_method",
                       {"method_name": "moonraker_test"}) == "ok"
    ws.call("printer.gcode.script", {"script": "TEST_REMOTE_METHOD"})
    assert agent2.wait_notification("moonraker_test", timeout=10)["params"] == {"result": "test"}


def test_bridge_websocket(srv, printer):
    ref = reference("jobs_bridge")
    bws = websocket.create_connection(srv.url.replace("http", "ws") + "/klippysocket",
                                      timeout=10)
    bws.send(json.dumps({"id": 1, "method": "info", "params": {}}))
    info = json.loads(bws.recv())
    assert info["id"] == 1 and set(info["result"]) == set(ref["info"]["result"])
    bws.send(json.dumps({"id": 2, "method": "objects/query",
                         "params": {"objects": {"print_stats": ["state"]}}}))
    query = json.loads(bws.recv())
    assert query["result"]["status"] == ref["query"]["result"]["status"]
    bws.send_binary(json.dumps({"id": 3, "method": "nope", "params": {}}).encode())
    assert json.loads(bws.recv()) == ref["error"]
    # two messages in one go, and a big streamed answer
    bws.send(json.dumps({"id": 4, "method": "objects/list", "params": {}}))
    bws.send(json.dumps({"id": 5, "method": "gcode/help", "params": {}}))
    got = {json.loads(bws.recv())["id"], json.loads(bws.recv())["id"]}
    assert got == {4, 5}
    # closed when Klippy goes away
    printer.kill()
    bws.settimeout(10)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            if not bws.recv():
                raise ConnectionError("closed")
    printer.start()
    srv.wait_klippy_state("ready")
    bws = websocket.create_connection(srv.url.replace("http", "ws") + "/klippysocket",
                                      timeout=10)
    bws.send(json.dumps({"id": 1, "method": "info"}))
    assert json.loads(bws.recv())["result"]["state"] == "ready"
    bws.close()


def test_bridge_refused_without_klippy(srv, printer):
    printer.kill()
    deadline = time.monotonic() + 10
    while srv.result("GET", "/server/info")["klippy_connected"] and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(srv.url.replace("http", "ws") + "/klippysocket", timeout=5)
    assert err.value.status_code == 503
    printer.start()
    srv.wait_klippy_state("ready")


def _bridge_from(url: str, source: str) -> websocket.WebSocket:
    import socket
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return websocket.create_connection(url, socket=sock, timeout=10)


def test_bridge_needs_oneshot_token_with_authorization(start_server, tmp_path):
    auth = start_server(config="[authorization]\ntrusted_clients:\n  127.0.0.1/32\n",
                        data_path=str(tmp_path / "pd"))
    url = auth.url.replace("http", "ws") + "/klippysocket"
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        _bridge_from(url, "127.0.0.2")
    assert err.value.status_code == 401
    token = auth.result("GET", "/access/oneshot_token")     # asked by a trusted client
    bws = _bridge_from(url + "?token=" + token, "127.0.0.2")
    bws.send(json.dumps({"id": 7, "method": "info"}))
    assert json.loads(bws.recv())["id"] == 7
    bws.close()
    with pytest.raises(websocket.WebSocketBadStatusException):    # oneshot: used up
        _bridge_from(url + "?token=" + token, "127.0.0.2")
    trusted = websocket.create_connection(url, timeout=10)
    trusted.send(json.dumps({"id": 8, "method": "info"}))
    assert json.loads(trusted.recv())["id"] == 8
    trusted.close()
