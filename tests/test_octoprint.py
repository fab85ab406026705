"""OctoPrint emulation: the slicers' upload flows replayed byte for byte over
a raw socket (PrusaSlicer's libcurl upload with ``Expect: 100-continue``,
Cura OctoPrint plugin's Qt multipart with a quoted boundary), and the other
``/api/*`` routes.  Real Klippy, real moonflask."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

SHARED = os.environ.get("MOONFLASK_SHARED", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared"))
GCODE = os.path.join(SHARED, "gcode")
SMALL = b"; small\nG28\nG1 X10 Y10 F3000\nM118 printed\n"


# The server's real API key, set by the srv fixture: from a trusted address
# too, a wrong key is a 401, as in the reference (a blank one counts as none).
API_KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def srv(start_server):
    server = start_server(config="[octoprint_compat]\n")
    API_KEY["key"] = server.result("GET", "/access/api_key")
    return server


def raw_request(srv, head: bytes, body: bytes, expect_continue: bool = False) -> tuple[int, dict, bytes]:
    """Send ``head`` + ``body`` on a fresh socket; returns (status, headers, body)."""
    s = socket.create_connection((srv.host, srv.port), timeout=30)
    s.sendall(head)
    if expect_continue:
        s.settimeout(2.0)
        try:
            interim = s.recv(4096)
            assert interim.startswith(b"HTTP/1.1 100"), interim
        except socket.timeout:
            pass      # curl sends the body anyway after its wait
        s.settimeout(30)
    s.sendall(body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    header_blob, _, rest = data.partition(b"\r\n\r\n")
    lines = header_blob.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    s.close()
    return status, headers, rest


def prusaslicer_upload(srv, name: str, data: bytes, print_: bool) -> tuple[int, dict, bytes]:
    """PrusaSlicer 2.5's OctoPrint upload (libcurl mime form), byte for byte."""
    b = "------------------------3c8ff1b2d4a7e9f0"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"print\"\r\n\r\n"
            f"{'true' if print_ else 'false'}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + \
        f"\r\n--{b}--\r\n".encode()
    head = (f"POST /api/files/local HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\n"
            f"User-Agent: PrusaSlicer/2.5.0\r\nAccept: */*\r\nX-Api-Key: {API_KEY['key']}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: multipart/form-data; boundary={b}\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    return raw_request(srv, head, body, expect_continue=True)


def cura_upload(srv, name: str, data: bytes, print_: bool) -> tuple[int, dict, bytes]:
    """Cura OctoPrint plugin's upload (Qt QHttpMultiPart: quoted boundary, no
    part Content-Type), byte for byte."""
    b = "boundary_.oOo._MTYzMjQ1Njc4OQ==MTI4NjQ1MjE3"
    parts = [("select", b"true"), ("print", b"true" if print_ else b"false")]
    body = b""
    for key, value in parts:
        body += (f"--{b}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n").encode() \
            + value + b"\r\n"
    body += (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\""
             "\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    head = (f"POST /api/files/local HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\n"
            f"X-Api-Key: {API_KEY['key']}\r\nUser-Agent: Cura/4.13.0 OctoPrintPlugin/3.7.0\r\n"
            f"Content-Type: multipart/form-data; boundary=\"{b}\"\r\nMIME-Version: 1.0\r\n"
            f"Content-Length: {len(body)}\r\nConnection: Keep-Alive\r\n"
            "Accept-Encoding: gzip, deflate\r\nAccept-Language: en-US,*\r\n\r\n").encode()
    return raw_request(srv, head, body)


def wait_state(srv, states, timeout=20):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = srv.result("GET", "/printer/objects/query?print_stats")["status"]["print_stats"]["state"]
        if st in states:
            return st
        time.sleep(0.1)
    raise TimeoutError(st)


def test_version_probe_and_stubs(srv):
    hdr = {"X-Api-Key": API_KEY["key"]}
    # a slicer with a wrong key on a trusted address: refused, as the reference
    assert srv.get("/api/version", headers={"X-Api-Key": "0123456789ABCDEF"}).status_code == 401
    v = srv.get("/api/version", headers=hdr).json()
    assert v["server"] == "1.5.0" and v["api"] == "0.1" and v["text"].startswith("OctoPrint (")
    assert srv.get("/api/server", headers=hdr).json() == {"server": "1.5.0", "safemode": None}
    assert srv.get("/api/login", headers=hdr).status_code == 405
    login = srv.post("/api/login", headers=hdr, json={"passive": True}).json()
    assert login["name"] == "_api" and login["admin"] is True
    st = srv.get("/api/settings", headers=hdr).json()
    assert st["plugins"]["UltimakerFormatPackage"]["installed"] is True
    assert srv.get("/api/job", headers=hdr).json()["state"] == "Operational"
    pr = srv.get("/api/printer", headers=hdr).json()
    assert set(pr["temperature"]) == {"bed", "tool0"}
    assert pr["state"]["flags"]["operational"] is True
    prof = srv.get("/api/printerprofiles", headers=hdr).json()
    assert prof["profiles"]["_default"]["current"] is True
    ws = srv.ws()
    r = srv.post("/api/printer/command", headers=hdr, json={"commands": ["M118 from octo"]})
    assert r.status_code == 200 and r.json() == {}
    msg = ws.wait_notification("notify_gcode_response",
                               predicate=lambda m: "from octo" in m["params"][0])
    assert msg["params"] == ["// from octo"]


def _hdr(server) -> dict:
    """What a slicer or Home Assistant sends: the server's API key."""
    return {"X-Api-Key": server.result("GET", "/access/api_key")}


def targets(srv) -> tuple[float, float]:
    """The extruder's and the bed's target, as Klippy reports them."""
    st = srv.result("GET", "/printer/objects/query?extruder=target&heater_bed=target")["status"]
    return st["extruder"]["target"], st["heater_bed"]["target"]


def test_printer_command_single_command(srv):
    """Issue 10 item 10: OctoPrint's single ``command`` as well as ``commands``."""
    ws = srv.ws()
    r = srv.post("/api/printer/command", headers=_hdr(srv), json={"command": "M118 single octo"})
    assert r.status_code == 200 and r.json() == {}
    msg = ws.wait_notification("notify_gcode_response",
                               predicate=lambda m: "single octo" in m["params"][0])
    assert msg["params"] == ["// single octo"]
    for body, word in (({}, "command"), ({"commands": [1]}, "commands"),
                       ({"command": {"x": 1}}, "commands"), ({"script": "beforePrint"}, "script")):
        r = srv.post("/api/printer/command", headers=_hdr(srv), json=body)
        assert r.status_code == 400, body
        assert word in r.json()["error"]["message"]


def test_tool_and_bed_targets_through_klippy(srv):
    """Issue 10 item 10: POST /api/printer/tool and /api/printer/bed (Home
    Assistant's OctoPrint integration) set the targets Klippy reports; bad
    requests change nothing."""
    assert targets(srv) == (0.0, 0.0)
    try:
        r = srv.post("/api/printer/tool", headers=_hdr(srv),
                     json={"command": "target", "targets": {"tool0": 200}})
        assert (r.status_code, r.content) == (204, b"")
        r = srv.post("/api/printer/bed", headers=_hdr(srv), json={"command": "target", "target": 60.5})
        assert (r.status_code, r.content) == (204, b"")
        assert targets(srv) == (200.0, 60.5)
        got = srv.get("/api/printer", headers=_hdr(srv)).json()["temperature"]
        assert (got["tool0"]["target"], got["bed"]["target"]) == (200.0, 60.5)
        for path, body, status, word in (
                ("tool", {"command": "target", "targets": {"tool1": 100}}, 400, "tool1"),
                ("tool", {"command": "target", "targets": {"nozzle": 100}}, 400, "nozzle"),
                ("tool", {"command": "target", "targets": {"tool0": "hot"}}, 400, "hot"),
                ("tool", {"command": "target", "targets": {"tool0": -5}}, 400, "-5"),
                ("tool", {"command": "target", "targets": [200]}, 400, "targets"),
                ("tool", {"command": "target"}, 400, "targets"),
                ("tool", {"command": "offset", "offsets": {"tool0": 5}}, 400, "offset"),
                ("bed", {"command": "target", "target": None}, 400, "None"),
                ("bed", {"command": "target"}, 400, "target"),
                ("bed", {"target": 50}, 400, "None"),
                ("tool", {"command": "target", "targets": {"tool0": 900}}, 400, "out of range")):
            r = srv.post(f"/api/printer/{path}", headers=_hdr(srv), json=body)
            assert r.status_code == status, (body, r.text)
            assert word in r.json()["error"]["message"], (body, r.text)
        assert targets(srv) == (200.0, 60.5)
    finally:
        srv.post("/api/printer/tool", headers=_hdr(srv),
                 json={"command": "target", "targets": {"tool0": 0}})
        srv.post("/api/printer/bed", headers=_hdr(srv), json={"command": "target", "target": 0})
    assert targets(srv) == (0.0, 0.0)


def test_tool_target_without_klippy_is_409(tmp_root):
    from helpers import Moonflask
    data = os.path.join(tmp_root, "octo_away")
    away = Moonflask(data, os.path.join(data, "no-klippy.sock"), config="[octoprint_compat]\n")
    away.start()
    try:
        r = away.post("/api/printer/tool", headers=_hdr(away),
                      json={"command": "target", "targets": {"tool0": 200}})
        assert (r.status_code, r.json()["error"]["message"]) == (
            409, "Printer is not operational")
        r = away.post("/api/printer/bed", headers=_hdr(away), json={"command": "target", "target": "x"})
        assert r.status_code == 400
    finally:
        away.stop()


def test_prusaslicer_upload_flow(srv):
    with open(os.path.join(GCODE, "prusaslicer_cube20_0.2mm_pla_labels.gcode"), "rb") as fh:
        data = fh.read()
    assert srv.get("/api/version", headers={"X-Api-Key": API_KEY["key"]}).status_code == 200
    status, headers, body = prusaslicer_upload(srv, "ps_cube.gcode", data, print_=False)
    assert status == 201, body
    res = json.loads(body)
    assert res["item"] == {**res["item"], "path": "ps_cube.gcode", "root": "gcodes",
                           "size": len(data)}
    assert res["print_started"] is False
    with open(os.path.join(srv.data_path, "gcodes", "ps_cube.gcode"), "rb") as fh:
        assert fh.read() == data
    md = srv.result("GET", "/server/files/metadata?filename=ps_cube.gcode")
    assert md["size"] == len(data)


def test_prusaslicer_upload_and_print(srv):
    status, _h, body = prusaslicer_upload(srv, "ps_print.gcode", SMALL, print_=True)
    assert status == 201 and json.loads(body)["print_started"] is True
    assert wait_state(srv, ("complete",)) == "complete"


def test_cura_upload_flow(srv):
    hdr = {"X-Api-Key": API_KEY["key"]}
    for path in ("/api/version", "/api/settings", "/api/printerprofiles", "/api/printer",
                 "/api/job"):
        assert srv.get(path, headers=hdr).status_code == 200, path
    with open(os.path.join(GCODE, "cura_cube20_0.2mm_ender3.gcode"), "rb") as fh:
        data = fh.read()
    status, _h, body = cura_upload(srv, "cura_cube.gcode", data, print_=False)
    assert status == 201, body
    res = json.loads(body)
    assert res["item"]["path"] == "cura_cube.gcode" and res["item"]["size"] == len(data)
    status, _h, body = cura_upload(srv, "cura_print.gcode", SMALL, print_=True)
    assert status == 201 and json.loads(body)["print_started"] is True
    assert wait_state(srv, ("complete",)) == "complete"
