"""Issue 5: webcams from the configuration and the database."""
from __future__ import annotations

import http.server
import threading

import pytest
import requests

from shapes import reference, shape_diff

CONFIG = """[webcam test]
stream_url: /webcam/?action=stream
snapshot_url: /webcam/?action=snapshot
"""


@pytest.fixture(scope="module")
def snapshot_server():
    """A tiny camera on 127.0.0.1: GET /snap answers a JPEG."""
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code = 200 if self.path == "/snap" else 404
            self.send_response(code)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff\xd9")

        def log_message(self, *a):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(config=CONFIG)


def test_list_config_webcam(srv):
    got = srv.get("/server/webcams/list").json()
    assert shape_diff(reference("jobs_http_webcams.list")["body"], got) == []
    cam = got["result"]["webcams"][0]
    assert cam["name"] == "test" and cam["source"] == "config"
    assert cam["stream_url"] == "/webcam/?action=stream"
    # the uid of a configured webcam is stable
    assert srv.result("GET", "/server/webcams/list")["webcams"][0]["uid"] == cam["uid"]
    assert srv.result("GET", "/server/webcams/item?name=test")["webcam"] == cam
    for fixture, path in [("get_item.unknown", "/server/webcams/item?name=nope"),
                          ("get_item.none", "/server/webcams/item")]:
        ref = reference("jobs_http_webcams." + fixture)
        resp = srv.get(path)
        assert (resp.status_code, resp.json()["error"]["message"]) == (
            ref["status"], ref["body"]["error"]["message"])


def test_add_update_rename_delete(srv, snapshot_server, start_server, printer_data):
    ws = srv.ws()
    cam = ws.call("server.webcams.post_item", {"name": "cam2", "stream_url": "/webcam2/?s",
                                               "snapshot_url": snapshot_server + "/snap"})
    ref = reference("jobs_rpc_webcams.post_item.new")
    assert shape_diff(ref["body"]["result"], cam) == []
    cam = cam["webcam"]
    assert cam["source"] == "database" and cam["target_fps"] == 15
    note = ws.wait_notification("notify_webcams_changed")
    assert shape_diff(ref["notifications"][0], note) == []
    assert [c["name"] for c in note["params"][0]["webcams"]] == ["test", "cam2"]
    uid = cam["uid"]
    upd = ws.call("server.webcams.post_item", {"uid": uid, "name": "cam2renamed",
                                               "rotation": 90, "extra_data": {"a": 1}})["webcam"]
    assert (upd["name"], upd["rotation"], upd["extra_data"], upd["uid"]) == (
        "cam2renamed", 90, {"a": 1}, uid)
    assert upd["stream_url"] == "/webcam2/?s"
    upd = ws.call("server.webcams.post_item", {"name": "cam2renamed", "target_fps": 30})
    assert upd["webcam"]["target_fps"] == 30 and upd["webcam"]["uid"] == uid
    for fixture, params in [
            ("post_item.config_cam", {"name": "test", "stream_url": "/x"}),
            ("post_item.rename_to_config", {"uid": uid, "name": "test"}),
            ("post_item.no_stream", {"name": "cam3"}),
            ("post_item.bad_rotation", {"name": "cam4", "stream_url": "/x", "rotation": 45}),
            ("post_item.bad_uid", {"uid": "nope", "name": "cam5", "stream_url": "/x"})]:
        reply = ws.request("server.webcams.post_item", params)
        expected = reference("jobs_rpc_webcams." + fixture)["body"]["error"]
        assert reply["error"] == expected, fixture
    got = ws.call("server.webcams.get_item", {"uid": uid})["webcam"]
    assert got["name"] == "cam2renamed"
    test = ws.call("server.webcams.test", {"uid": uid})
    assert shape_diff(reference("jobs_rpc_webcams.test")["body"]["result"], test) == []
    assert test["snapshot_reachable"] is True
    assert test["snapshot_url"] == snapshot_server + "/snap"
    assert test["stream_url"].startswith("http://") and test["stream_url"].endswith("/webcam2/?s")
    cfg_test = ws.call("server.webcams.test", {"name": "test"})
    assert cfg_test["snapshot_reachable"] is False
    # survives a restart
    srv.stop()
    srv2 = start_server(config=CONFIG, data_path=printer_data)
    names = [c["name"] for c in srv2.result("GET", "/server/webcams/list")["webcams"]]
    assert names == ["test", "cam2renamed"]
    ws = srv2.ws()
    err = ws.request("server.webcams.delete_item", {"name": "test"})["error"]
    assert err == reference("jobs_rpc_webcams.delete_item.config")["body"]["error"]
    deleted = ws.call("server.webcams.delete_item", {"uid": uid})["webcam"]
    assert deleted["name"] == "cam2renamed"
    note = ws.wait_notification("notify_webcams_changed")
    assert [c["name"] for c in note["params"][0]["webcams"]] == ["test"]
    err = ws.request("server.webcams.delete_item", {"uid": uid})["error"]
    assert err["code"] == -32601 and err["message"] == f"Webcam with UID {uid} not found"
    resp = requests.post(srv2.url + "/server/webcams/item",
                         json={"name": "httpcam", "stream_url": "/s", "flip_vertical": True})
    assert resp.status_code == 200 and resp.json()["result"]["webcam"]["flip_vertical"] is True
