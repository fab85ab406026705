"""Issue 5: notifiers (apprise) on print job events, with a local JSON
webhook receiver on 127.0.0.1 standing in for the notification service."""
from __future__ import annotations

import http.server
import json
import os
import queue
import sys
import threading

import pytest

from shapes import reference, shape_diff

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402


class Receiver:
    """Records apprise ``json://`` posts; GET /snap serves a JPEG (attach)."""

    def __init__(self) -> None:
        self.posts: "queue.Queue[dict]" = queue.Queue()
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                rec.posts.put({"path": self.path, "body": json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"\xff\xd8\xff\xd9")

            def log_message(self, *a):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def next(self, timeout: float = 90.0) -> dict:
        return self.posts.get(timeout=timeout)


@pytest.fixture(scope="module")
def receiver():
    rec = Receiver()
    yield rec
    rec.httpd.shutdown()


@pytest.fixture(scope="module")
def srv(start_server, printer_data, receiver):
    gcodes = os.path.join(printer_data, "gcodes")
    write_long_gcode(os.path.join(gcodes, "long.gcode"), 6)
    with open(os.path.join(gcodes, "small.gcode"), "w") as fh:
        fh.write("G28\nM118 small\n")
    config = f"""[notifier all]
url: json://127.0.0.1:{receiver.port}/all
events: *
title: T {{event_name}}
body: B {{event_name}}|{{event_args[1].filename}}|{{event_args[1].state}}|{{event_message}}

[notifier done]
url: json://127.0.0.1:{receiver.port}/done
events: complete, error
body: {{event_args[1].filename}} done in {{'%.1f' % event_args[1].print_duration}} s{{% if event_args[1].filament_used > 0 %}} using filament{{% endif %}}
attach: http://127.0.0.1:{receiver.port}/snap
"""
    yield start_server(config=config, args=["-g"])
    if os.environ.get("MOONFLASK_KEEP_LOGS"):
        import shutil
        shutil.copytree(os.path.join(printer_data, "logs"), os.environ["MOONFLASK_KEEP_LOGS"],
                        dirs_exist_ok=True)


def test_list_shape(srv, receiver):
    got = srv.get("/server/notifiers/list").json()
    assert shape_diff(reference("jobs_http_notifiers.list")["body"], got) == []
    first = got["result"]["notifiers"][0]
    assert first == {"name": "all", "url": f"json://127.0.0.1:{receiver.port}/all",
                     "title": "T {event_name}",
                     "body": "B {event_name}|{event_args[1].filename}|"
                             "{event_args[1].state}|{event_message}",
                     "body_format": None, "events": ["*"], "attach": None}
    assert got["result"]["notifiers"][1]["events"] == ["complete", "error"]


def test_debug_test_endpoint(srv, receiver):
    got = srv.post("/debug/notifiers/test?name=all").json()
    assert got == reference("jobs_http_debug.notifiers.test")["body"]
    post = receiver.next()
    assert post["path"] == "/all"
    assert post["body"]["title"] == "T *"
    assert post["body"]["message"] == "B *|notifier_test.gcode|standby|"
    ref = reference("jobs_http_debug.notifiers.test.unknown")
    resp = srv.post("/debug/notifiers/test?name=nope")
    assert (resp.status_code, resp.json()["error"]["message"]) == (
        ref["status"], ref["body"]["error"]["message"])


def test_print_events_render_templates(srv, receiver):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "small.gcode"})
    got = [receiver.next() for _ in range(3)]
    by_path = {}
    for post in got:
        by_path.setdefault(post["path"], []).append(post["body"])
    assert [p["message"] for p in by_path["/all"]] == [
        "B started|small.gcode|complete|", "B complete|small.gcode|complete|"]
    done = by_path["/done"][0]
    assert done["message"] == "small.gcode done in 0.0 s"
    assert len(done["attachments"]) == 1
    assert done["attachments"][0]["mimetype"] == "image/jpeg"


def test_pause_resume_notifications(srv, receiver):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    assert receiver.next()["body"]["message"] == "B started|long.gcode|printing|"
    ws.call("printer.print.pause")
    assert receiver.next()["body"]["message"] == "B paused|long.gcode|paused|"
    ws.call("printer.print.resume")
    assert receiver.next()["body"]["message"] == "B resumed|long.gcode|printing|"
    msgs = [receiver.next(90)["body"]["message"] for _ in range(2)]
    assert "B complete|long.gcode|complete|" in msgs
    assert any(m.startswith("long.gcode done in ") and m.endswith("using filament")
               for m in msgs)


def test_debug_endpoint_needs_debug_flag(start_server, receiver, tmp_path):
    other = start_server(config=f"[notifier x]\nurl: json://127.0.0.1:{receiver.port}/x\n",
                         data_path=str(tmp_path / "pd"))
    assert other.post("/debug/notifiers/test?name=x").status_code == 404
    assert other.result("GET", "/server/notifiers/list")["notifiers"][0]["name"] == "x"


def test_not_loaded_without_a_notifier_section(start_server):
    """As the reference: no [notifier ...] section, no notifier component."""
    from helpers import RpcError
    plain = start_server()
    resp = plain.get("/server/notifiers/list")
    assert resp.status_code == 404
    with pytest.raises(RpcError) as err:
        plain.ws().call("server.notifiers.list")
    assert err.value.code == -32601
    assert "notifier" not in plain.result("GET", "/server/info")["components"]
