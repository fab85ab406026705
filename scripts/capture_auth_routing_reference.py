#!/usr/bin/env python3
"""Capture how the reference Moonraker 0.11.0 authenticates before routing,
answers long requests and CORS preflights, into ``tests/reference/``:

- ``auth_routing_table.json``: for every endpoint moonflask registers (path x
  each of its verbs), for wrong verbs and unknown paths, from an untrusted
  (127.0.0.2) and a trusted (127.0.0.1) address, with each credential kind of
  :data:`KINDS` (none, blank, and presented-but-invalid ones): the status and
  the error message;
- ``auth_routing_ws.json``: websocket upgrades with invalid credentials, and
  which notifications an unauthenticated untrusted websocket receives;
- ``http_long_requests.json``: request lines / header blocks around 64 KiB;
- ``cors_origins_<config>.json``: preflight, GET, 404 and a multipart upload
  with an ``Origin`` header, from both addresses, with and without
  ``cors_domains``.

The reference runs as a black box against the simulated printer (its code is
GPL: observed, never copied).  The same probes (:func:`credentials`,
:func:`table_cases`, :func:`run_case`, ...) are imported by the tests, which
run them against moonflask and compare.

    .venv/bin/python scripts/capture_auth_routing_reference.py \
        [--reference-python .reference-venv/bin/python] \
        [--klippy-python .klippy-venv/bin/python] [--out tests/reference]
"""
from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable

import jwt
import requests
import websocket
from requests.adapters import HTTPAdapter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO_ROOT)
import capture_reference as cr  # noqa: E402

UNTRUSTED = "127.0.0.2"
TRUSTED = "127.0.0.1"
CORS_DOMAINS = "cors_domains:\n  http://example.com\n  *.allowed.org\n"

# credential kinds: how each one is presented (filled in by credentials())
KINDS = ("none", "blank_key", "blank_bearer", "bad_token", "tampered_token", "alg_none",
         "refresh_as_access", "wrong_key", "bad_access_token_arg", "oneshot_reused")
INVALID_KINDS = ("bad_token", "tampered_token", "alg_none", "refresh_as_access",
                 "wrong_key", "bad_access_token_arg", "oneshot_reused")
# Never executed from the trusted address with credentials the reference might
# let through (they restart, reboot or change the machine); refused cases only.
DANGEROUS = ("/machine/reboot", "/machine/shutdown", "/server/restart", "/printer/restart",
             "/printer/firmware_restart", "/printer/emergency_stop", "/machine/services",
             "/machine/update", "/printer/print", "/server/job_queue", "/machine/sudo",
             "/server/files", "/server/database", "/access/", "/server/history",
             "/server/webcams", "/server/announcements", "/server/logs", "/printer/gcode",
             "/api/", "/debug/", "/server/extensions", "/server/notifiers")
UNKNOWN_PATHS = ("/server/nope", "/does/not/exist", "/access/nope", "/printer/nope",
                 "/favicon.ico", "/machine/nope/deeper", "/api/nope", "/server/files/nope/x.g")
VERBS = ("GET", "POST", "DELETE", "PUT")
JSONRPC_BODY = {"jsonrpc": "2.0", "method": "server.info", "id": 1}


class SourceAdapter(HTTPAdapter):
    """A requests adapter whose sockets are bound to ``source``."""

    def __init__(self, source: str, **kw: Any) -> None:
        self.source = source
        super().__init__(**kw)

    def init_poolmanager(self, *a: Any, **kw: Any) -> None:
        kw["source_address"] = (self.source, 0)
        super().init_poolmanager(*a, **kw)


def session(source: str) -> requests.Session:
    """A requests session whose connections come from address ``source``."""
    s = requests.Session()
    s.mount("http://", SourceAdapter(source))
    return s


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- credentials ----------------------------------------------------------------
def credentials(url: str, username: str = "probe", password: str = "probepass") -> dict:
    """Create (or log in) ``username`` from the trusted address and build, for
    each of :data:`KINDS`, the ``{"headers": ..., "params": ...}`` presenting it.

    Returns ``{"kinds": {kind: kw}, "api_key": key, "token": access token}``.
    ``oneshot_reused`` is a oneshot token that was issued and used once.
    """
    tr = session(TRUSTED)
    r = tr.post(url + "/access/user", json={"username": username, "password": password},
                timeout=30)
    if r.status_code != 200:
        r = tr.post(url + "/access/login", json={"username": username, "password": password},
                    timeout=30)
    res = r.json()["result"]
    token, refresh = res["token"], res["refresh_token"]
    key = tr.get(url + "/access/api_key", timeout=10).json()["result"]
    un = session(UNTRUSTED)
    one = un.get(url + "/access/oneshot_token", headers={"Authorization": "Bearer " + token},
                 timeout=10).json()["result"]
    used = un.get(url + "/server/info", params={"token": one}, timeout=10)
    assert used.status_code == 200, used.text
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = base64.urlsafe_b64encode(json.dumps(
        dict(claims, exp=claims["exp"] + 86400)).encode()).rstrip(b"=").decode()
    head, _body, sig = token.split(".")
    tampered = f"{head}.{forged}.{sig}"        # a longer life, the old signature
    none_alg = jwt.encode(claims, None, algorithm="none")
    kinds = {
        "none": {},
        "blank_key": {"headers": {"X-Api-Key": ""}},
        "blank_bearer": {"headers": {"Authorization": "Bearer "}},
        "bad_token": {"headers": {"Authorization": "Bearer abc.def.ghi"}},
        "tampered_token": {"headers": {"Authorization": "Bearer " + tampered}},
        "alg_none": {"headers": {"Authorization": "Bearer " + none_alg}},
        "refresh_as_access": {"headers": {"Authorization": "Bearer " + refresh}},
        "wrong_key": {"headers": {"X-Api-Key": "0" * 32}},
        "bad_access_token_arg": {"params": {"access_token": "abc.def.ghi"}},
        "oneshot_reused": {"params": {"token": one}},
    }
    return {"kinds": kinds, "api_key": key, "token": token}


# -- the table --------------------------------------------------------------------
def moonflask_endpoints() -> list:
    """Every HTTP endpoint declared by moonflask's blueprints (all groups)."""
    from moonflask import app as appmod
    eps = []
    for group in appmod.BLUEPRINTS:
        mod = importlib.import_module(f"moonflask.blueprints.{group}")
        eps.extend(ep for ep in mod.blueprint.endpoints if "http" in ep.transports)
    return eps


def table_cases(endpoints: Iterable[Any]) -> list[dict]:
    """The (path, verb, source, kind) cases of the table: each endpoint with
    each of its verbs and one wrong verb, every unknown path, from the
    untrusted address with every kind, from the trusted one with the invalid
    kinds (blank ones too where the call is harmless)."""
    seen: dict[str, set] = {}
    for ep in endpoints:
        path = ep.path.replace("<root>/<path:filename>", "gcodes/x.gcode")
        if "<" in path:
            continue
        seen.setdefault(path, set()).update(ep.methods)
    seen.setdefault("/server/jsonrpc", set()).add("POST")
    cases = []
    for path, verbs in sorted(seen.items()):
        wrong = [v for v in VERBS if v not in verbs][:1]
        for verb in sorted(verbs) + wrong:
            kind_wrong = verb in wrong
            for kind in KINDS:
                cases.append({"path": path, "method": verb, "source": "untrusted",
                              "kind": kind, "wrong_verb": kind_wrong})
                harmless = kind_wrong or verb == "GET" and not path.startswith(DANGEROUS)
                if kind in INVALID_KINDS and not path.startswith(DANGEROUS[:8]) \
                        and (kind != "oneshot_reused" or harmless):
                    cases.append({"path": path, "method": verb, "source": "trusted",
                                  "kind": kind, "wrong_verb": kind_wrong})
                elif kind in ("none", "blank_key") and harmless:
                    cases.append({"path": path, "method": verb, "source": "trusted",
                                  "kind": kind, "wrong_verb": kind_wrong})
    for path in UNKNOWN_PATHS:
        for kind in KINDS:
            for source in ("untrusted", "trusted"):
                cases.append({"path": path, "method": "GET", "source": source, "kind": kind,
                              "unknown": True})
    return cases


def run_case(url: str, case: dict, creds: dict, sessions: dict) -> dict:
    """Send one table case; returns ``{"status", "message"}`` (message: the
    error message, or None)."""
    kw = creds["kinds"][case["kind"]]
    body = {"json": JSONRPC_BODY} if case["path"] == "/server/jsonrpc" else {}
    r = sessions[case["source"]].request(case["method"], url + case["path"], timeout=30,
                                         headers=kw.get("headers"), params=kw.get("params"),
                                         **body)
    try:
        message = r.json().get("error", {}).get("message")
    except (ValueError, AttributeError):
        message = None
    return {"status": r.status_code, "message": message}


def table_sessions() -> dict:
    """``{"untrusted": session, "trusted": session}``."""
    return {"untrusted": session(UNTRUSTED), "trusted": session(TRUSTED)}


def case_key(case: dict) -> str:
    """The key of a case in the recorded table."""
    return f"{case['source']} {case['kind']} {case['method']} {case['path']}"


# -- websockets -------------------------------------------------------------------
def ws_connect(url: str, source: str, **kw: Any) -> websocket.WebSocket:
    """A websocket-client connection whose socket is bound to ``source``."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return websocket.create_connection(url, socket=sock, timeout=10, **kw)


def ws_call(ws: websocket.WebSocket, method: str, params: dict | None = None,
            req_id: int = 7) -> tuple[dict, list[str]]:
    """Send a request, return (reply, notification methods seen meanwhile)."""
    msg: dict = {"jsonrpc": "2.0", "method": method, "id": req_id}
    if params is not None:
        msg["params"] = params
    ws.send(json.dumps(msg))
    seen = []
    ws.settimeout(15)
    while True:
        reply = json.loads(ws.recv())
        if reply.get("id") == req_id:
            return reply, seen
        seen.append(reply.get("method"))


def ws_collect(ws: websocket.WebSocket, seconds: float) -> list[str]:
    """The notification methods received during ``seconds``."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ws.settimeout(max(0.05, min(0.5, end - time.monotonic())))
        try:
            out.append(json.loads(ws.recv()).get("method"))
        except websocket.WebSocketTimeoutException:
            pass
    return out


def ws_upgrades(url: str, creds: dict) -> dict:
    """For each source and invalid kind: the upgrade status and the
    ``server.info`` error (None when served)."""
    ws_url = url.replace("http", "ws") + "/websocket"
    out = {}
    for source_name, source in (("untrusted", UNTRUSTED), ("trusted", TRUSTED)):
        for kind in ("none", "blank_key") + INVALID_KINDS:
            kw = creds["kinds"][kind]
            target = ws_url
            if kw.get("params"):
                target += "?" + "&".join(f"{k}={v}" for k, v in kw["params"].items())
            headers = [f"{k}: {v}" for k, v in kw.get("headers", {}).items()]
            try:
                w = ws_connect(target, source, header=headers)
            except websocket.WebSocketBadStatusException as err:
                out[f"{source_name} {kind}"] = {"status": err.status_code, "error": None}
                continue
            reply, _ = ws_call(w, "server.info")
            out[f"{source_name} {kind}"] = {"status": 101, "error": reply.get("error")}
            w.close()
    return out


def ws_notifications(url: str, creds: dict, seconds: float = 3.0) -> dict:
    """Which notifications an untrusted websocket receives while a trusted
    client runs ``M118`` (``notify_gcode_response``) and proc stats tick:
    before it authenticates, and after ``server.connection.identify`` with
    a token."""
    ws_url = url.replace("http", "ws") + "/websocket"
    tr = session(TRUSTED)
    w = ws_connect(ws_url, UNTRUSTED)
    tr.post(url + "/printer/gcode/script", json={"script": "M118 probe"}, timeout=30)
    before = ws_collect(w, seconds)
    reply, seen = ws_call(w, "server.connection.identify",
                          {"client_name": "probe", "version": "1", "type": "web",
                           "url": "http://x", "access_token": creds["token"]})
    tr.post(url + "/printer/gcode/script", json={"script": "M118 probe2"}, timeout=30)
    after = seen + ws_collect(w, seconds)
    w.close()
    return {"before_identify": sorted(set(before)), "after_identify": sorted(set(after)),
            "identify_ok": "result" in reply}


# -- long requests ----------------------------------------------------------------
def raw_request(port: int, data: bytes, timeout: float = 30) -> int | None:
    """Send raw bytes; the status of the answer, or None when the server
    closed the connection without one."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        return None
    finally:
        s.close()
    return int(buf.split(b" ", 2)[1])


LONG_SIZES = (16 * 1024, 60 * 1024, 65000, 70 * 1024, 128 * 1024)


def long_requests(port: int) -> dict:
    """Status of ``GET /printer/gcode/script?script=M118 AAA...`` whose request
    line is N bytes, of ``/server/info`` with one header line of N bytes, and
    with headers totalling N bytes (20 of N/20), for N in LONG_SIZES."""
    out = {}
    for n in LONG_SIZES:
        pad = n - len("GET /printer/gcode/script?script=M118%20 HTTP/1.1\r\n")
        line = f"GET /printer/gcode/script?script=M118%20{'A' * pad} HTTP/1.1\r\n".encode()
        out[f"line {n}"] = raw_request(port, line + b"Host: x\r\nConnection: close\r\n\r\n")
        hdr = b"X-Big: " + b"B" * (n - 9) + b"\r\n"
        out[f"header {n}"] = raw_request(
            port, b"GET /server/info HTTP/1.1\r\nHost: x\r\n" + hdr + b"Connection: close\r\n\r\n")
        hdrs = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * (n // 20 - 10)) for i in range(20))
        out[f"headers {n}"] = raw_request(
            port, b"GET /server/info HTTP/1.1\r\nHost: x\r\n" + hdrs + b"Connection: close\r\n\r\n")
    return out


# -- CORS ---------------------------------------------------------------------------
CORS_ORIGINS = ("http://example.com", "https://x.allowed.org", "http://127.0.0.1:8080",
                "http://127.0.0.1", "https://127.0.0.1:8443", "http://127.0.0.2:8080",
                "http://localhost:8080", "http://192.168.1.50:8080", "http://evil.example.org")
ACA = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
       "Access-Control-Allow-Headers", "Access-Control-Allow-Credentials",
       "Access-Control-Max-Age", "Access-Control-Expose-Headers")


def _aca(resp: requests.Response) -> dict:
    return {k: resp.headers[k] for k in ACA if k in resp.headers}


def cors_probe(url: str, api_key: str) -> dict:
    """For each source and Origin: the preflight of an upload (status, CORS
    headers), a GET, an unknown path, and the multipart upload itself (with
    the API key from the untrusted address), as a browser sends them."""
    out = {}
    for source_name, source in (("trusted", TRUSTED), ("untrusted", UNTRUSTED)):
        s = session(source)
        auth = {"X-Api-Key": api_key} if source_name == "untrusted" else {}
        for origin in CORS_ORIGINS:
            pre = s.options(url + "/server/files/upload", timeout=15, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key"})
            get = s.get(url + "/server/info", headers={"Origin": origin, **auth}, timeout=15)
            nf = s.get(url + "/server/nope", headers={"Origin": origin, **auth}, timeout=15)
            up = s.post(url + "/server/files/upload", headers={"Origin": origin, **auth},
                        files={"file": ("cors_probe.gcode", b"G28\nM118 cors\n",
                                        "application/octet-stream")}, timeout=30)
            out[f"{source_name} {origin}"] = {
                "preflight": {"status": pre.status_code, "headers": _aca(pre)},
                "get": {"status": get.status_code, "headers": _aca(get)},
                "not_found": {"status": nf.status_code, "headers": _aca(nf)},
                "upload": {"status": up.status_code, "headers": _aca(up)},
            }
    return out


# -- the reference ----------------------------------------------------------------
def write_conf(path: str, port: int, klippy: str, cors: bool) -> None:
    with open(path, "w") as fh:
        fh.write(f"[server]\nhost: 0.0.0.0\nport: {port}\nklippy_uds_address: {klippy}\n\n"
                 "[authorization]\ntrusted_clients:\n  127.0.0.1/32\n"
                 + (CORS_DOMAINS if cors else "") + "\n")


def start_ref(python: str, data: str, port: int) -> subprocess.Popen:
    out = open(os.path.join(data, "ref.stdout"), "ab")
    proc = subprocess.Popen([python, "-m", "moonraker", "-d", data,
                             "-c", os.path.join(data, "config", "moonraker.conf"),
                             "-l", os.path.join(data, "logs", "moonraker.log")],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            r = requests.get(f"http://127.0.0.1:{port}/server/info", timeout=2)
            if r.json()["result"]["klippy_state"] == "ready":
                return proc
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("reference did not start")


def save(out: str, name: str, data: dict) -> None:
    with open(os.path.join(out, name + ".json"), "w") as fh:
        json.dump({"name": name, "captured_with": "moonraker 0.11.0 "
                   "(scripts/capture_auth_routing_reference.py)", **data}, fh, indent=1,
                  sort_keys=True)
        fh.write("\n")


def capture(out: str, python: str, klippy_python: str | None) -> None:
    import sim_printer
    tmp = tempfile.mkdtemp(prefix="mfar-", dir="/tmp")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(tmp, "gcodes"),
                            klippy_python)
    try:
        sim_printer.wait_ready(sim.socket_path, 120, sim)
        for cors in (True, False):
            data = os.path.join(tmp, "data_cors" if cors else "data_plain")
            for sub in ("config", "logs", "gcodes", "database", "comms"):
                os.makedirs(os.path.join(data, sub), exist_ok=True)
            port = free_port()
            write_conf(os.path.join(data, "config", "moonraker.conf"), port, sim.socket_path,
                       cors)
            proc = start_ref(python, data, port)
            url = f"http://127.0.0.1:{port}"
            try:
                creds = credentials(url)
                if cors:
                    sessions = table_sessions()
                    rows = {}
                    for case in table_cases(moonflask_endpoints()):
                        rows[case_key(case)] = run_case(url, case, creds, sessions)
                    save(out, "auth_routing_table", {"rows": rows})
                    print(f"{len(rows)} table rows")
                    save(out, "auth_routing_ws", {
                        "upgrades": ws_upgrades(url, creds),
                        "notifications": ws_notifications(url, creds)})
                    save(out, "http_long_requests", {"results": long_requests(port)})
                save(out, f"cors_origins_{'domains' if cors else 'plain'}",
                     {"cors_domains": cors, "results": cors_probe(url, creds["api_key"])})
            finally:
                proc.terminate()
                proc.wait(15)
    finally:
        sim_printer.stop(sim)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    cr.reference_arguments(p, keep=False)
    args = p.parse_args(argv)
    capture(args.out, args.reference_python, args.klippy_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
