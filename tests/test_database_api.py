"""Database endpoints over real HTTP and websockets, against a real LMDB
store.  Spec: web_api.md "Database APIs", "Debug APIs"; reference
behaviour in tests/reference/db_*.json (scripts/capture_auth_db_reference.py).
"""
from __future__ import annotations

import os
import random
import sys
import threading
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import RpcError, WsClient  # noqa: E402
from shapes import reference, shape_diff  # noqa: E402

ITEM = "/server/database/item"


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(args=["-g"], server_options="max_websocket_connections: 1200")


def ref_body(name: str):
    body = reference(name)["body"]
    return {"result": body["result"]} if "jsonrpc" in body and "result" in body else body


def check(srv, name: str, method: str, path: str, expect_status: int | None = None, **kw):
    """Send the request recorded as fixture ``name``; compare status, shape
    and (for errors) the exact message with the reference."""
    ref = reference(name)
    r = requests.request(method, srv.url + path, timeout=15, **kw)
    assert r.status_code == (expect_status or ref["status"]), (name, r.text)
    body = r.json()
    if "error" in ref["body"]:
        assert body["error"]["message"] == ref["body"]["error"]["message"], name
    else:
        assert shape_diff(ref["body"], body) == [], (name, body)
    return body


def test_reference_cases_http(srv):
    c = lambda *a, **kw: check(srv, *a, **kw)  # noqa: E731
    c("db_get_missing_namespace", "GET", ITEM, params={"namespace": "fluidd"})
    c("db_post_nested", "POST", ITEM,
      json={"namespace": "capt", "key": "settings.console.autocomplete", "value": True})
    c("db_post_array_key", "POST", ITEM,
      json={"namespace": "capt", "key": ["dotted.key", "x"], "value": {"a": [1, 2]}})
    body = c("db_get_namespace", "GET", ITEM, params={"namespace": "capt"})
    assert body["result"] == {"namespace": "capt", "key": None, "value": {
        "dotted.key": {"x": {"a": [1, 2]}}, "settings": {"console": {"autocomplete": True}}}}
    body = c("db_get_nested", "GET", ITEM, params={"namespace": "capt",
                                                  "key": "settings.console"})
    assert body["result"]["value"] == {"autocomplete": True}
    body = c("db_get_array_key", "POST", ITEM,
             json={"namespace": "capt", "key": ["dotted.key", "x", "a"], "value": 5})
    assert body["result"]["key"] == ["dotted.key", "x", "a"]
    body = c("db_get_array_key_json_hint", "GET",
             ITEM + '?namespace=capt&key:json=["dotted.key","x"]')
    assert body["result"] == {"namespace": "capt", "key": ["dotted.key", "x"],
                              "value": {"a": 5}}
    c("db_get_missing_key", "GET", ITEM, params={"namespace": "capt", "key": "nope.deeper"})
    c("db_get_key_in_scalar", "GET", ITEM,
      params={"namespace": "capt", "key": "settings.console.autocomplete.x"})
    # type hints on HTTP
    for name, query, value in (("db_post_hint_int", "key=count&value:int=100", 100),
                               ("db_post_hint_float", "key=ratio&value:float=2.5", 2.5),
                               ("db_post_hint_bool", "key=flag&value:bool=true", True),
                               ("db_post_hint_json", 'key=obj&value:json={"x":[1,{"y":null}]}',
                                {"x": [1, {"y": None}]}),
                               ("db_post_string", "key=text&value=hello", "hello")):
        body = c(name, "POST", ITEM + "?namespace=capt&" + query)
        assert body["result"]["value"] == value
        got = srv.result("GET", ITEM, params={"namespace": "capt", "key": query.split("&")[0][4:]})
        assert got["value"] == value and type(got["value"]) is type(value)
    c("db_post_no_key", "POST", ITEM, json={"namespace": "capt", "value": 1})
    c("db_post_no_value", "POST", ITEM, json={"namespace": "capt", "key": "a"})
    c("db_post_no_namespace", "POST", ITEM, json={"key": "a", "value": 1})
    c("db_post_empty_key", "POST", ITEM, json={"namespace": "capt", "key": "", "value": 1})
    c("db_post_bad_key_type", "POST", ITEM, json={"namespace": "capt", "key": 5, "value": 1})
    c("db_post_key_list_with_int", "POST", ITEM,
      json={"namespace": "capt", "key": ["a", 5], "value": 1})
    assert srv.result("GET", ITEM, params={"namespace": "capt", "key": "a"})["value"] == {"5": 1}
    body = c("db_post_into_scalar", "POST", ITEM,
             json={"namespace": "capt", "key": "count.sub", "value": 1})
    c("db_post_null_value", "POST", ITEM, json={"namespace": "capt", "key": "nothing",
                                                "value": None})
    body = c("db_delete_item", "DELETE", ITEM, params={"namespace": "capt", "key": "count"})
    assert body["result"]["value"] == {"sub": 1}
    c("db_delete_missing", "DELETE", ITEM, params={"namespace": "capt", "key": "count"})
    c("db_delete_missing_namespace", "DELETE", ITEM,
      params={"namespace": "nonexistent_ns", "key": "count"})


def test_protected_and_forbidden(srv):
    for ns in ("moonraker", "gcode_metadata", "announcements"):
        r = srv.post(ITEM, json={"namespace": ns, "key": "x", "value": 1})
        assert (r.status_code, r.json()["error"]["message"]) == (
            403, f"Write access to namespace '{ns}' is forbidden")
        r = srv.delete(ITEM, params={"namespace": ns, "key": "x"})
        assert r.status_code == 403
    assert srv.get(ITEM, params={"namespace": "moonraker"}).status_code == 200
    # hidden: credentials (and job history) are neither listed, readable nor
    # writable, and look like namespaces that do not exist
    srv.post("/debug/database/item", json={"namespace": "authorized_users", "key": "u",
                                           "value": {"password": "h"}})
    assert "authorized_users" not in srv.result("GET", "/server/database/list")["namespaces"]
    assert "authorized_users" in srv.result("GET", "/debug/database/list")["namespaces"]
    for method, kw in (("GET", {"params": {"namespace": "authorized_users"}}),
                       ("GET", {"params": {"namespace": "authorized_users", "key": "u"}}),
                       ("POST", {"json": {"namespace": "authorized_users", "key": "u",
                                          "value": 1}}),
                       ("DELETE", {"params": {"namespace": "authorized_users", "key": "u"}})):
        r = srv.get(ITEM, **kw) if method == "GET" else (
            srv.post(ITEM, **kw) if method == "POST" else srv.delete(ITEM, **kw))
        assert r.status_code == 404, (method, kw)
        assert r.json()["error"]["message"] == "Namespace authorized_users not found"
        assert "password" not in r.text
    # debug endpoints bypass the policy
    r = srv.post("/debug/database/item", json={"namespace": "moonraker", "key": "mf_test",
                                               "value": 1})
    assert r.json()["result"] == {"namespace": "moonraker", "key": "mf_test", "value": 1}
    r = srv.delete("/debug/database/item", params={"namespace": "moonraker", "key": "mf_test"})
    assert r.json()["result"]["value"] == 1
    r = srv.get("/debug/database/item", params={"namespace": "authorized_users"})
    assert r.json()["result"]["value"]["u"] == {"password": "h"}
    assert shape_diff(ref_body("db_debug_list"), srv.get("/debug/database/list").json()) == []
    srv.delete("/debug/database/item", params={"namespace": "authorized_users", "key": "u"})


def _status_message(resp):
    body = resp.json()
    return resp.status_code, body["error"]["message"] if "error" in body else None


def test_fresh_database_namespaces_as_reference(start_server, tmp_root):
    """Issue 10 item 5: a fresh database holds the namespaces the reference's
    fresh one holds (dbns_fresh_list; its order varies run to run)."""
    fresh = start_server(data_path=os.path.join(tmp_root, "dbns_fresh"))
    ref = reference("dbns_fresh_list")["body"]["result"]["namespaces"]
    got = fresh.result("GET", "/server/database/list")["namespaces"]
    assert sorted(got) == sorted(ref) == ["announcements", "gcode_metadata", "moonraker"]
    fresh.stop()


def test_namespace_access_as_reference(start_server, tmp_root):
    """Issue 10 item 5: which namespaces clients may read and write, on a
    fresh database, as recorded (dbns_get_/post_/delete_*).  Beyond the
    reference, moonflask's own stores (authorized_users, history; the
    reference keeps them in SQL tables) stay not found when written."""
    from capture_args_db_config_reference import NAMESPACES
    fresh = start_server(data_path=os.path.join(tmp_root, "dbns_access"))
    hidden = {"authorized_users", "history"}
    for ns in NAMESPACES:
        ref = reference(f"dbns_get_{ns}")
        got = _status_message(fresh.get(ITEM, params={"namespace": ns}))
        assert got == (ref["status"], ref["body"].get("error", {}).get("message")), ns
    ws = fresh.ws()
    for ns in ("authorized_users", "database"):
        ref = reference(f"dbns_rpc_get_{ns}")["body"]["error"]
        with pytest.raises(RpcError) as err:
            ws.call("server.database.get_item", {"namespace": ns})
        assert (err.value.code, err.value.message) == (ref["code"], ref["message"])
    for verb in ("post", "delete"):
        for ns in NAMESPACES:
            ref = reference(f"dbns_{verb}_{ns}")
            if verb == "post":
                resp = fresh.post(ITEM, json={"namespace": ns, "key": "probe", "value": 1})
            else:
                resp = fresh.delete(ITEM, params={"namespace": ns, "key": "probe"})
            expect = (ref["status"], ref["body"].get("error", {}).get("message"))
            if ns in hidden:
                assert ref["status"] == 200
                expect = (404, f"Namespace {ns} not found")
            assert _status_message(resp) == expect, (verb, ns, resp.text)
            if expect[0] == 200:
                assert resp.json() == {"result": ref["body"]["result"]}
    assert "authorized_users" not in fresh.result("GET", "/server/database/list")["namespaces"]
    fresh.stop()
    # with [update_manager], its namespace is protected as with the reference
    um = start_server(config="[update_manager]\n", data_path=os.path.join(tmp_root, "dbns_um"))
    assert _status_message(um.post(ITEM, json={"namespace": "update_manager", "key": "x",
                                               "value": 1})) == (
        403, "Write access to namespace 'update_manager' is forbidden")
    um.stop()


def test_query_string_type_hints_as_reference(srv):
    """Issue 10 item 5: unknown hints keep the raw string under the bare
    name, ``:bool`` is ``true`` or false, as recorded (dbns_hint_*)."""
    from capture_args_db_config_reference import HINTS
    for name, query in HINTS:
        ref = reference(f"dbns_hint_{name}")
        resp = srv.post(f"{ITEM}?namespace=dbns_hints&{query}")
        assert resp.status_code == ref["status"], (name, resp.text)
        if "error" in ref["body"]:
            assert resp.json()["error"]["message"] == ref["body"]["error"]["message"]
        else:
            assert resp.json() == ref["body"], name


def test_list_and_emptied_namespace_dropped(srv):
    assert shape_diff(ref_body("db_list"), srv.get("/server/database/list").json()) == []
    srv.post(ITEM, json={"namespace": "ephemeral", "key": "only", "value": 1})
    assert "ephemeral" in srv.result("GET", "/server/database/list")["namespaces"]
    r = srv.delete(ITEM, params={"namespace": "ephemeral", "key": "only"})
    assert r.json()["result"] == {"namespace": "ephemeral", "key": "only", "value": 1}
    assert "ephemeral" not in srv.result("GET", "/server/database/list")["namespaces"]
    assert srv.get(ITEM, params={"namespace": "ephemeral"}).status_code == 404


def test_websocket_rpc(srv):
    ws = srv.ws()
    with pytest.raises(RpcError) as err:
        ws.call("server.database.get_item", {"namespace": "fluidd"})
    assert (err.value.code, err.value.message) == (-32601, "Namespace fluidd not found")
    res = ws.call("server.database.post_item", {"namespace": "capt", "key": "rpc.a",
                                                "value": [1, 2, 3]})
    assert shape_diff(ref_body("db_rpc_post_item"), {"result": res}) == []
    assert ws.call("server.database.get_item", {"namespace": "capt", "key": "rpc"}) == {
        "namespace": "capt", "key": "rpc", "value": {"a": [1, 2, 3]}}
    assert ws.call("server.database.delete_item", {"namespace": "capt", "key": "rpc.a"}
                   )["value"] == [1, 2, 3]
    with pytest.raises(RpcError) as err:
        ws.call("server.database.post_item", {"namespace": "gcode_metadata", "key": "a",
                                              "value": 1})
    assert (err.value.code, err.value.message) == (
        403, "Write access to namespace 'gcode_metadata' is forbidden")
    # unicode, large and deep values round-trip
    value = {"ü": "日本", "deep": {"a": {"b": {"c": list(range(1000))}}}, "f": 1.5e-7}
    ws.call("server.database.post_item", {"namespace": "capt", "key": ["k.with.dots"],
                                          "value": value})
    got = ws.call("server.database.get_item", {"namespace": "capt", "key": ["k.with.dots"]})
    assert got["value"] == value


def test_debug_endpoints_need_debug_flag(start_server, tmp_root):
    data = os.path.join(tmp_root, "db_nodebug")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    plain = start_server(data_path=data, wait_ready=False)
    assert plain.get("/debug/database/list").status_code == 404
    ws = plain.ws()
    with pytest.raises(RpcError) as err:
        ws.call("debug.database.list")
    assert err.value.code == -32601
    assert plain.get("/server/database/list").status_code == 200


def test_thousand_concurrent_websocket_writers(srv):
    """1,000 writers at once: 100 websockets with 10 requests in flight each.
    (1,000 separate websockets overwhelm the transport today: see report.)"""
    n = 1000
    sockets = 100
    clients: list[WsClient] = []
    t0 = time.monotonic()
    for _ in range(sockets):
        clients.append(srv.ws())
    print(f"{sockets} websockets opened in {time.monotonic() - t0:.2f}s")
    clients = [clients[i % sockets] for i in range(n)]
    barrier = threading.Barrier(n)
    errors: list = []

    def writer(i: int, ws: WsClient) -> None:
        try:
            barrier.wait(30)
            # distinct top-level keys and nested keys under one shared
            # top-level key (read-modify-write inside one transaction)
            ws.call("server.database.post_item",
                    {"namespace": "storm", "key": f"w{i}", "value": {"i": i}}, timeout=60)
            ws.call("server.database.post_item",
                    {"namespace": "storm", "key": f"shared.w{i}", "value": i}, timeout=60)
        except Exception as err:  # collected, asserted below
            errors.append((i, repr(err)))

    threads = [threading.Thread(target=writer, args=(i, c)) for i, c in enumerate(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    assert not errors, errors[:5]
    value = srv.result("GET", ITEM, params={"namespace": "storm"})["value"]
    assert len(value) == n + 1
    assert all(value[f"w{i}"] == {"i": i} for i in range(n))
    assert value["shared"] == {f"w{i}": i for i in range(n)}      # no lost update
    for c in set(clients):
        c.ws.shutdown()     # no close handshake: the server answers close frames slowly
    print(f"{2 * n} writes from {n} concurrent writers in {elapsed:.2f}s")


def test_sigkill_during_write_storm(start_server, tmp_root):
    """kill -9 during a storm of acknowledged writes, N times: every write
    acknowledged before the kill is there after the restart."""
    data = os.path.join(tmp_root, "db_crash")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    acked: dict[str, int] = {}
    lock = threading.Lock()
    for rnd in range(5):
        server = start_server(data_path=data, wait_ready=False)
        stop = threading.Event()

        def storm(wid: int, ws: WsClient) -> None:
            seq = 0
            while not stop.is_set():
                key = f"r{rnd}w{wid}"
                try:
                    ws.call("server.database.post_item",
                            {"namespace": "crash", "key": [key, str(seq % 50)],
                             "value": seq}, timeout=5)
                    ws.call("server.database.post_item",
                            {"namespace": "crash", "key": f"last.{key}", "value": seq},
                            timeout=5)
                except Exception:
                    return
                with lock:
                    acked[key] = seq
                seq += 1

        clients = [server.ws() for _ in range(8)]
        threads = [threading.Thread(target=storm, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        time.sleep(random.uniform(0.3, 1.2))
        server.kill()
        stop.set()
        for t in threads:
            t.join(10)
        for c in clients:
            c.close()
        assert any(k.startswith(f"r{rnd}") for k in acked), "no write acknowledged"
    server = start_server(data_path=data, wait_ready=False)
    stored = server.result("GET", ITEM, params={"namespace": "crash"})["value"]
    for key, seq in acked.items():
        assert stored["last"][key] >= seq, key
        assert stored[key][str(seq % 50)] == seq, key
    server.stop()
