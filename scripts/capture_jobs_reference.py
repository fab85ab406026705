#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's print-job and front-end service
behaviour (history, job queue, webcams, announcements, notifiers,
extensions/agents, bridge websocket) into tests/reference/jobs_*.json.

Same approach and fixture format as scripts/capture_reference.py (whose
Capture/WS helpers it reuses): the simulated printer and the reference run
side by side on free ports in a temporary directory.

    .venv/bin/python scripts/capture_jobs_reference.py \
        --reference-python .reference-venv/bin/python
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import tempfile
import threading
import time

import websocket

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "tests", "data")   # long_gcode.py lives there
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, HERE)
import capture_reference as cr  # noqa: E402
import sim_printer  # noqa: E402
from long_gcode import write_long_gcode  # noqa: E402

PREFIX = "jobs_"


class Receiver:
    """A JSON webhook receiver on 127.0.0.1 (apprise ``json://``)."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(n)
                try:
                    rec.posts.append({"path": self.path, "body": json.loads(body)})
                except ValueError:
                    rec.posts.append({"path": self.path, "raw": body.decode("utf-8", "replace")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):  # noqa: N802 (webcam snapshot)
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


class Agent:
    """A websocket agent that answers every request with ``{"echo": params}``."""

    def __init__(self, url: str, name: str) -> None:
        self.ws = websocket.create_connection(url, timeout=10)
        self.msgs: list[dict] = []
        self.replies: dict = {}
        self.cond = threading.Condition()
        self.name = name
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        while True:
            try:
                self.ws.settimeout(None)
                text = self.ws.recv()
            except Exception:
                return
            if not text:
                return
            msg = json.loads(text)
            with self.cond:
                if "method" in msg and "id" in msg:
                    self.msgs.append(msg)
                    self.ws.send(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                             "result": {"echo": msg.get("params")}}))
                elif "method" in msg:
                    self.msgs.append(msg)
                else:
                    self.replies[msg.get("id")] = msg
                self.cond.notify_all()

    def call(self, method, params=None, rid=[500]):
        rid[0] += 1
        frame = {"jsonrpc": "2.0", "method": method, "id": rid[0]}
        if params is not None:
            frame["params"] = params
        self.ws.send(json.dumps(frame))
        deadline = time.monotonic() + 10
        with self.cond:
            while rid[0] not in self.replies and time.monotonic() < deadline:
                self.cond.wait(0.5)
            return frame, self.replies.get(rid[0])

    def close(self):
        self.ws.close()


CONF = """\
[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {sock}

[authorization]
trusted_clients:
  127.0.0.0/8
  ::1/128
cors_domains:
  http://example.com

[history]

[job_queue]
load_on_startup: False
automatic_transition: True
job_transition_delay: 0.5
queue_gcode_uploads: True

[announcements]
dev_mode: True

[webcam test]
stream_url: /webcam/?action=stream
snapshot_url: /webcam/?action=snapshot

[notifier test]
url: json://127.0.0.1:{rport}/hook
events: *
title: T {{event_name}}
body: B {{event_name}}|{{event_args[1].filename}}|{{event_args[1].state}}|{{event_message}}
"""


def wait_method(ws, start, method, timeout=20.0, pred=None):
    idx, msg = ws.wait_for(lambda m: isinstance(m, dict) and m.get("method") == method
                           and (pred is None or pred(m)), start, timeout)
    return msg


def capture(cap, port, sim, wss, rec, gcodes):
    url = "ws://127.0.0.1:%d/websocket" % port
    ws = cr.WS(url)
    wss.append(ws)
    cap.rpc(PREFIX + "identify", ws, "server.connection.identify",
            {"client_name": "capture", "version": "0.0.1", "type": "web",
             "url": "http://example.com"})
    H = lambda n, m, p, **kw: cap.http(PREFIX + "http_" + n, m, p, ws=ws, **kw)  # noqa: E731
    R = lambda n, m, params=None, **kw: cap.rpc(PREFIX + "rpc_" + n, ws, m, params, **kw)  # noqa: E731

    # ---------------- history ------------------------------------------
    H("history.list.empty", "GET", "/server/history/list")
    H("history.totals.empty", "GET", "/server/history/totals")
    start = ws.mark()
    R("print.small", "printer.print.start", {"filename": "small.gcode"})
    wait_method(ws, start, "notify_history_changed",
                pred=lambda m: m["params"][0]["action"] == "finished")
    time.sleep(0.5)
    cap.save(PREFIX + "print_small_notifications", "websocket", None, None, None,
             ws.notifications(start))
    # long print: pause, resume, cancel
    start = ws.mark()
    R("print.long", "printer.print.start", {"filename": "long.gcode"})
    wait_method(ws, start, "notify_history_changed")
    time.sleep(1.0)
    H("history.list.in_progress", "GET", "/server/history/list")
    R("print.pause", "printer.print.pause", linger=1.0)
    R("history.get_job.paused", "server.history.get_job", {"uid": "000002"})
    R("print.resume", "printer.print.resume", linger=1.0)
    R("print.cancel", "printer.print.cancel", linger=2.0)
    cap.save(PREFIX + "print_long_cancel_notifications", "websocket", None, None, None,
             [m for m in ws.notifications(start)
              if m.get("method") != "notify_gcode_response"])
    # an error print: a file with a move out of range
    start = ws.mark()
    R("print.bad", "printer.print.start", {"filename": "bad.gcode"}, linger=2.0)
    cap.save(PREFIX + "print_bad_notifications", "websocket", None, None, None,
             ws.notifications(start))
    H("history.list", "GET", "/server/history/list")
    H("history.list.limit1", "GET", "/server/history/list?limit=1&start=1&order=asc")
    H("history.list.since", "GET", "/server/history/list?since=99999999999")
    H("history.list.bad_order", "GET", "/server/history/list?order=sideways")
    R("history.list", "server.history.list", {"limit": 2, "order": "asc"})
    H("history.totals", "GET", "/server/history/totals")
    R("history.totals", "server.history.totals")
    H("history.get_job", "GET", "/server/history/job?uid=000001")
    H("history.get_job.unknown", "GET", "/server/history/job?uid=0000FF")
    H("history.get_job.garbage", "GET", "/server/history/job?uid=zzz")
    H("history.get_job.missing", "GET", "/server/history/job")
    R("history.get_job.unknown", "server.history.get_job", {"uid": "0000FF"})
    os.unlink(os.path.join(gcodes, "small.gcode"))
    time.sleep(1.0)
    H("history.get_job.deleted_file", "GET", "/server/history/job?uid=000001")
    R("history.delete_job", "server.history.delete_job", {"uid": "000001"})
    R("history.delete_job.unknown", "server.history.delete_job", {"uid": "000001"})
    H("history.delete_job.missing", "DELETE", "/server/history/job")
    H("history.reset_totals", "POST", "/server/history/reset_totals")
    H("history.totals.after_reset", "GET", "/server/history/totals")
    H("history.delete_job.all", "DELETE", "/server/history/job?all=true")

    # ---------------- job queue ----------------------------------------
    with open(os.path.join(gcodes, "small.gcode"), "w") as f:
        f.write("; small test file\nG28\nG1 X10 Y10 F3000\nM118 printed\n")
    H("job_queue.status", "GET", "/server/job_queue/status")
    H("job_queue.post_job", "POST", "/server/job_queue/job?filenames=small.gcode,small2.gcode",
      linger=0.5)
    H("job_queue.post_job.missing_file", "POST", "/server/job_queue/job?filenames=nope.gcode")
    H("job_queue.post_job.no_args", "POST", "/server/job_queue/job")
    R("job_queue.post_job", "server.job_queue.post_job",
      {"filenames": ["small3.gcode"], "reset": False}, linger=0.5)
    st = cap.rpc_call(ws, "server.job_queue.status")[1]["result"]
    ids = [j["job_id"] for j in st["queued_jobs"]]
    R("job_queue.jump", "server.job_queue.jump", {"job_id": ids[2]}, linger=0.5)
    R("job_queue.jump.unknown", "server.job_queue.jump", {"job_id": "DEADBEEF"})
    H("job_queue.delete_job", "DELETE", "/server/job_queue/job?job_ids=" + ids[1], linger=0.5)
    H("job_queue.delete_job.unknown", "DELETE", "/server/job_queue/job?job_ids=NOPE", linger=0.3)
    H("job_queue.delete_job.missing", "DELETE", "/server/job_queue/job")
    R("job_queue.pause", "server.job_queue.pause", linger=0.5)
    R("job_queue.post_job.reset", "server.job_queue.post_job",
      {"filenames": ["small.gcode", "small2.gcode", "small3.gcode"], "reset": True}, linger=0.5)
    start = ws.mark()
    R("job_queue.start", "server.job_queue.start", linger=6.0)
    cap.save(PREFIX + "job_queue_run_notifications", "websocket", None, None, None,
             [m for m in ws.notifications(start) if m.get("method") != "notify_gcode_response"])
    H("job_queue.status.after_run", "GET", "/server/job_queue/status")
    # upload while printing -> queued
    start = ws.mark()
    R("print.long2", "printer.print.start", {"filename": "long.gcode"})
    time.sleep(1.0)
    import requests
    resp = requests.post("http://127.0.0.1:%d/server/files/upload" % port,
                         files={"file": ("up.gcode", b"G28\nM118 up\n")},
                         data={"print": "true"}, timeout=10)
    time.sleep(0.5)
    cap.save(PREFIX + "http_upload_print_while_printing", "http",
             {"method": "POST", "path": "/server/files/upload", "form": {"print": "true"}},
             resp.status_code, resp.json(), ws.notifications(start))
    H("job_queue.status.after_upload", "GET", "/server/job_queue/status")
    R("job_queue.pause2", "server.job_queue.pause")
    R("print.cancel2", "printer.print.cancel", linger=2.0)
    H("job_queue.delete_job.all", "DELETE", "/server/job_queue/job?all=true", linger=0.3)

    # ---------------- webcams -------------------------------------------
    H("webcams.list", "GET", "/server/webcams/list")
    R("webcams.list", "server.webcams.list")
    H("webcams.get_item.name", "GET", "/server/webcams/item?name=test")
    H("webcams.get_item.unknown", "GET", "/server/webcams/item?name=nope")
    H("webcams.get_item.none", "GET", "/server/webcams/item")
    snap = "http://127.0.0.1:%d/snap" % rec.port
    r = R("webcams.post_item.new", "server.webcams.post_item",
          {"name": "cam2", "stream_url": "/webcam2/?action=stream", "snapshot_url": snap},
          linger=0.5)
    uid = r["body"]["result"]["webcam"]["uid"] if r["body"] and "result" in r["body"] else ""
    R("webcams.post_item.update", "server.webcams.post_item",
      {"uid": uid, "name": "cam2renamed", "rotation": 90, "extra_data": {"a": 1}}, linger=0.5)
    R("webcams.post_item.no_uid_existing_name", "server.webcams.post_item",
      {"name": "cam2renamed", "target_fps": 30}, linger=0.5)
    R("webcams.post_item.config_cam", "server.webcams.post_item",
      {"name": "test", "stream_url": "/x"})
    R("webcams.post_item.rename_to_config", "server.webcams.post_item",
      {"uid": uid, "name": "test"})
    R("webcams.post_item.no_stream", "server.webcams.post_item", {"name": "cam3"})
    R("webcams.post_item.bad_rotation", "server.webcams.post_item",
      {"name": "cam4", "stream_url": "/x", "rotation": 45})
    R("webcams.post_item.bad_uid", "server.webcams.post_item",
      {"uid": "nope", "name": "cam5", "stream_url": "/x"})
    R("webcams.get_item.uid", "server.webcams.get_item", {"uid": uid})
    R("webcams.test", "server.webcams.test", {"uid": uid})
    R("webcams.test.config", "server.webcams.test", {"name": "test"})
    R("webcams.delete_item.config", "server.webcams.delete_item", {"name": "test"})
    R("webcams.delete_item", "server.webcams.delete_item", {"uid": uid}, linger=0.5)
    R("webcams.delete_item.unknown", "server.webcams.delete_item", {"uid": uid})

    # ---------------- announcements -------------------------------------
    H("announcements.list", "GET", "/server/announcements/list")
    H("announcements.list.no_dismissed", "GET",
      "/server/announcements/list?include_dismissed=false")
    H("announcements.feeds", "GET", "/server/announcements/feeds")
    H("announcements.update", "POST", "/server/announcements/update", linger=0.3)
    H("announcements.post_feed", "POST", "/server/announcements/feed?name=my_feed")
    H("announcements.post_feed.again", "POST", "/server/announcements/feed?name=my_feed")
    H("announcements.post_feed.bad", "POST", "/server/announcements/feed?name=bad%20name")
    H("announcements.post_feed.missing", "POST", "/server/announcements/feed")
    H("announcements.feeds.after_add", "GET", "/server/announcements/feeds")
    H("announcements.delete_feed", "DELETE", "/server/announcements/feed?name=my_feed")
    H("announcements.delete_feed.unknown", "DELETE", "/server/announcements/feed?name=nope")
    H("announcements.delete_feed.builtin", "DELETE",
      "/server/announcements/feed?name=moonraker")
    H("announcements.dismiss.unknown", "POST",
      "/server/announcements/dismiss?entry_id=a%2Fb%2Fissue%2F1")
    R("announcements.list", "server.announcements.list", {"include_dismissed": False})
    R("announcements.feeds", "server.announcements.feeds")

    # ---------------- notifiers -----------------------------------------
    H("notifiers.list", "GET", "/server/notifiers/list")
    R("notifiers.list", "server.notifiers.list")
    n0 = len(rec.posts)
    H("debug.notifiers.test", "POST", "/debug/notifiers/test?name=test", linger=2.0)
    H("debug.notifiers.test.unknown", "POST", "/debug/notifiers/test?name=nope")
    cap.save(PREFIX + "notifier_posts", "http", None, None, None, [],
             posts=rec.posts, test_posts=rec.posts[n0:])

    # ---------------- extensions / agents -------------------------------
    H("extensions.list.empty", "GET", "/server/extensions/list")
    start = ws.mark()
    agent = Agent(url, "moonagent")
    f, r = agent.call("server.connection.identify",
                      {"client_name": "moonagent", "version": "0.0.1", "type": "agent",
                       "url": "https://example.com/agent"})
    time.sleep(0.5)
    cap.save(PREFIX + "agent_identify", "websocket", f, None, r, ws.notifications(start))
    H("extensions.list", "GET", "/server/extensions/list")
    R("extensions.list", "server.extensions.list")
    R("extensions.request", "server.extensions.request",
      {"agent": "moonagent", "method": "moontest.hello", "arguments": {"a": 1}})
    R("extensions.request.list_args", "server.extensions.request",
      {"agent": "moonagent", "method": "moontest.hello", "arguments": [1, 2]})
    R("extensions.request.no_args", "server.extensions.request",
      {"agent": "moonagent", "method": "moontest.hello"})
    H("extensions.request", "POST", "/server/extensions/request",
      body={"agent": "moonagent", "method": "moontest.hello", "arguments": {"b": 2}})
    R("extensions.request.unknown_agent", "server.extensions.request",
      {"agent": "nope", "method": "x"})
    start = ws.mark()
    f, r = agent.call("connection.send_event", {"event": "my_event", "data": {"x": 1}})
    time.sleep(0.5)
    cap.save(PREFIX + "agent_send_event", "websocket", f, None, r, ws.notifications(start))
    start = ws.mark()
    f, r = agent.call("connection.send_event", {"event": "no_data"})
    time.sleep(0.3)
    cap.save(PREFIX + "agent_send_event.no_data", "websocket", f, None, r, ws.notifications(start))
    f, r = agent.call("connection.send_event", {"event": "connected"})
    cap.save(PREFIX + "agent_send_event.reserved", "websocket", f, None, r)
    R("send_event.not_agent", "connection.send_event", {"event": "x"})
    R("register_remote_method.not_agent", "connection.register_remote_method",
      {"method_name": "moonraker_test"})
    f, r = agent.call("connection.register_remote_method", {"method_name": "moonraker_test"})
    cap.save(PREFIX + "agent_register_remote_method", "websocket", f, None, r)
    f, r = agent.call("connection.register_remote_method", {"method_name": "moonraker_test"})
    cap.save(PREFIX + "agent_register_remote_method.again", "websocket", f, None, r)
    n = len(agent.msgs)
    R("gcode.TEST_REMOTE_METHOD", "printer.gcode.script", {"script": "TEST_REMOTE_METHOD"},
      linger=1.0)
    cap.save(PREFIX + "agent_remote_method_call", "websocket", None, None, None,
             agent.msgs[n:])
    ag2 = Agent(url, "moonagent")
    f, r = ag2.call("server.connection.identify",
                    {"client_name": "moonagent", "version": "0.0.1", "type": "agent",
                     "url": "https://example.com/agent"})
    cap.save(PREFIX + "agent_identify.duplicate", "websocket", f, None, r)
    ag2.close()
    start = ws.mark()
    agent.close()
    time.sleep(1.0)
    cap.save(PREFIX + "agent_disconnect", "websocket", None, None, None, ws.notifications(start))
    H("extensions.list.after_disconnect", "GET", "/server/extensions/list")

    # ---------------- bridge websocket ----------------------------------
    bws = websocket.create_connection("ws://127.0.0.1:%d/klippysocket" % port, timeout=10)
    bws.send(json.dumps({"id": 1, "method": "info", "params": {}}))
    info = json.loads(bws.recv())
    bws.send(json.dumps({"id": 2, "method": "objects/query",
                         "params": {"objects": {"print_stats": ["state"]}}}))
    query = json.loads(bws.recv())
    bws.send_binary(json.dumps({"id": 3, "method": "nope", "params": {}}).encode())
    err = json.loads(bws.recv())
    cap.save(PREFIX + "bridge", "websocket", None, None, None, [],
             info=info, query=query, error=err)
    bws.close()


def run(args):
    tmp = tempfile.mkdtemp(prefix="mfjref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    gcodes = os.path.join(data, "gcodes")
    for name in ("small.gcode", "small2.gcode", "small3.gcode"):
        with open(os.path.join(gcodes, name), "w") as f:
            f.write("; small test file\nG28\nG1 X10 Y10 F3000\nM118 printed\n")
    with open(os.path.join(gcodes, "bad.gcode"), "w") as f:
        f.write("G28\nG1 X9999\n")
    write_long_gcode(os.path.join(gcodes, "long.gcode"), 8)
    rec = Receiver()
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, sock=os.path.join(tmp, "klippy", "klippy.sock"),
                            rport=rec.port))
    sim = sim_printer.start(os.path.join(tmp, "klippy"), gcodes)
    mr = None
    wss = []
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        mr = cr.start_moonraker(args.reference_python, data, conf, tmp, "-g")
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        capture(cap, port, sim, wss, rec, gcodes)
    finally:
        for w in wss:
            w.close()
        cr.stop_process(mr)
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def main():
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap, klippy=False)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
