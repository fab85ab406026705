"""Long requests, as the reference accepts them: a request line and headers
of up to 64 KiB together (a gcode script in the query string), 414/431
beyond (the reference closes the connection there).  Both HTTP servers:
``python -m moonflask`` (gevent's handler) and the gunicorn entry.

Reference: tests/reference/http_long_requests.json, recorded by
scripts/capture_auth_routing_reference.py against Moonraker 0.11.0.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import REPO, Moonflask  # noqa: E402
from shapes import reference  # noqa: E402
import capture_auth_routing_reference as probes  # noqa: E402  (scripts/ is on sys.path)


def expected(key: str, ref_status: int | None) -> int:
    """Ours: the reference's status where it answers, else 414 for the
    request line and 431 for headers."""
    if ref_status is not None:
        return ref_status
    return 414 if key.startswith("line") else 431


def raw(port: int, data: bytes) -> tuple[int, dict, bytes]:
    """Send ``data``, read the answer until the server closes; returns
    (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), headers, body


def check_limits(port: int, json_field_refusal: bool = True) -> None:
    """Every probe of the recording answers as expected; the refusals carry
    Moonraker's JSON error body (``json_field_refusal`` False: a single
    header line over 64 KiB is refused by gunicorn's own parser, whose 431
    page is HTML)."""
    ref = reference("http_long_requests")["results"]
    ours = probes.long_requests(port)
    assert {k: expected(k, v) for k, v in ref.items()} == ours
    status, headers, body = raw(port, b"GET /server/info?x=" + b"a" * 70000
                                + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and json.loads(body) == {
        "error": {"code": 414, "message": "Request-URI Too Long"}}
    assert headers["Content-Type"].startswith("application/json")
    status, _, body = raw(port, b"GET /server/info HTTP/1.1\r\nHost: x\r\nX-Big: "
                          + b"b" * 70000 + b"\r\nConnection: close\r\n\r\n")
    assert status == 431
    if json_field_refusal:
        assert json.loads(body)["error"]["code"] == 431
    # headers that are each small but together over 64 KiB: moonflask decides
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 4000) for i in range(20))
    status, _, body = raw(port, b"GET /server/info HTTP/1.1\r\nHost: x\r\n" + many
                          + b"Connection: close\r\n\r\n")
    assert status == 431 and json.loads(body)["error"]["code"] == 431


def gcode_echoed(srv: Moonflask, size: int) -> None:
    """A ``GET /printer/gcode/script?script=M118 ...`` whose request line is
    ``size`` bytes runs: 200 "ok" and the echo reaches a websocket."""
    ws = srv.ws()
    text = "L" * (size - 60)
    r = srv.get("/printer/gcode/script", params={"script": "M118 " + text}, timeout=60)
    assert r.status_code == 200, r.text[:200]
    assert r.json() == {"result": "ok"}
    note = ws.wait_notification("notify_gcode_response", timeout=30,
                                predicate=lambda m: text[:100] in m["params"][0])
    assert note["params"][0].count("L") == len(text)
    ws.close()


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server()


def test_long_request_lines_and_headers_as_reference(srv):
    check_limits(srv.port)
    # the server keeps serving
    assert srv.get("/server/info").status_code == 200


def test_gcode_script_in_a_16k_query_string(srv):
    gcode_echoed(srv, 16 * 1024)
    gcode_echoed(srv, 60 * 1024)


def test_gunicorn_entry_has_the_same_limits(tmp_root, printer):
    root = os.path.join(tmp_root, "guni_limits")
    srv = Moonflask(root, printer.socket_path)  # writes the config; served by gunicorn here
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    env = dict(os.environ, MOONFLASK_DATA_PATH=root)
    out = open(os.path.join(root, "gunicorn.out"), "ab")
    proc = subprocess.Popen([gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    try:
        srv.wait_klippy_state("ready", timeout=60)
        check_limits(srv.port, json_field_refusal=False)
        gcode_echoed(srv, 16 * 1024)
    finally:
        srv.stop()
        proc.terminate()
        proc.wait(10)
