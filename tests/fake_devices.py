"""Small real servers on 127.0.0.1 speaking the protocols of network power
devices and WLED, for the power/wled tests and scripts/capture_power.py.

Each device keeps its own state (``on``), records every request it received
in ``requests`` (method, path with query, body text, headers) and can be
switched "by hand" (``dev.on = True``) to test polling.  ``stop()`` closes it.
"""
from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import urllib.parse
from typing import Any


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        dev: HttpDevice = self.server.device  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        dev.requests.append({"method": self.command, "path": self.path, "body": body,
                             "headers": dict(self.headers)})
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        with dev.lock:
            status, reply = dev.handle(self.command, url.path, query, body, self.headers)
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _serve  # noqa: N815

    def log_message(self, *_a: Any) -> None:
        pass


class HttpDevice:
    """Base class: an HTTP server on 127.0.0.1 with ``address`` ("127.0.0.1:PORT")."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.on = False
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.host = host
        self.httpd = http.server.ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.device = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.address = f"{host}:{self.port}"
        self.url = f"http://{self.address}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, method: str, path: str, query: dict, body: str,
               headers: Any) -> tuple[int, Any]:
        """Answer one request: ``(status, JSON-able or bytes)``."""
        raise NotImplementedError

    def paths(self) -> list[str]:
        """``"METHOD path"`` of every request received."""
        return [f"{r['method']} {r['path']}" for r in self.requests]

    def stop(self) -> None:
        """Close the server."""
        self.httpd.shutdown()
        self.httpd.server_close()


class Tasmota(HttpDevice):
    """Tasmota's ``/cm?cmnd=Power1 On|Off|`` (user/password in the query)."""

    def __init__(self, password: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.password = password

    def handle(self, method, path, query, body, headers):
        if path != "/cm":
            return 404, {"error": "not found"}
        if self.password is not None and query.get("password") != self.password:
            return 401, {"WARNING": "Need user=<username>&password=<password>"}
        cmnd = query.get("cmnd", "").split()
        if not cmnd or not cmnd[0].lower().startswith("power"):
            return 200, {"Command": "Unknown"}
        key = "POWER" + cmnd[0][5:]
        if len(cmnd) > 1:
            arg = cmnd[1].lower()
            self.on = (not self.on) if arg == "toggle" else arg in ("on", "1")
        return 200, {key: "ON" if self.on else "OFF"}


class Shelly(HttpDevice):
    """Shelly gen1 (``/relay/N?turn=on``) or gen2 (``/rpc/Switch.Set``)."""

    def __init__(self, gen: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.gen = gen

    def handle(self, method, path, query, body, headers):
        if path == "/shelly":
            if self.gen == 1:
                return 200, {"type": "SHSW-1", "mac": "AABBCCDDEEFF", "auth": False,
                             "fw": "20230913-112003/v1.14.0-gcb84623"}
            return 200, {"name": None, "id": "shellyplus1-a8032ab12345", "gen": 2,
                         "mac": "A8032AB12345", "fw_id": "20231107-164738/1.0.8-g",
                         "ver": "1.0.8", "app": "Plus1", "auth_en": False}
        if self.gen == 1 and path.startswith("/relay/"):
            turn = query.get("turn")
            if turn:
                self.on = (not self.on) if turn == "toggle" else turn == "on"
            return 200, {"ison": self.on, "has_timer": False, "timer_started": 0,
                         "timer_duration": 0, "timer_remaining": 0, "source": "http"}
        if self.gen == 2 and path == "/rpc/Switch.GetStatus":
            return 200, {"id": int(query.get("id", 0)), "source": "http", "output": self.on}
        if self.gen == 2 and path == "/rpc/Switch.Set":
            was = self.on
            self.on = query.get("on") == "true"
            return 200, {"was_on": was}
        return 404, {"error": "not found"}


class HomeAssistant(HttpDevice):
    """Home Assistant REST: ``GET /api/states/ENTITY``, ``POST
    /api/services/DOMAIN/turn_on|turn_off`` with a bearer token."""

    def __init__(self, token: str, entity: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.token = token
        self.entity = entity

    def handle(self, method, path, query, body, headers):
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "401: Unauthorized"}
        state = {"entity_id": self.entity, "state": "on" if self.on else "off",
                 "attributes": {}, "last_changed": "2026-12-01T00:00:00+00:00"}
        if method == "GET" and path == f"/api/states/{self.entity}":
            return 200, state
        if method == "POST" and path.startswith("/api/services/"):
            if json.loads(body or "{}").get("entity_id") != self.entity:
                return 400, {"message": "bad entity"}
            action = path.rsplit("/", 1)[-1]
            self.on = {"turn_on": True, "turn_off": False}.get(action, not self.on)
            return 200, []
        return 404, {"message": "Not found"}


class Hue(HttpDevice):
    """A Hue bridge: ``/api/USER/lights/ID`` (``state.on``) and
    ``PUT /api/USER/lights/ID/state``; groups use ``action`` and ``state.any_on``."""

    def __init__(self, user: str, device_id: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.user = user
        self.device_id = device_id

    def handle(self, method, path, query, body, headers):
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "api" or parts[1] != self.user:
            return 200, [{"error": {"type": 1, "address": path,
                                    "description": "unauthorized user"}}]
        kind, dev = parts[2], parts[3]
        if dev != self.device_id:
            return 200, [{"error": {"type": 3, "address": path,
                                    "description": "resource not available"}}]
        if method == "PUT" and len(parts) == 5:
            self.on = bool(json.loads(body)["on"])
            return 200, [{"success": {f"/{kind}/{dev}/{parts[4]}/on": self.on}}]
        if kind == "groups":
            return 200, {"name": "g", "action": {"on": self.on},
                         "state": {"any_on": self.on, "all_on": self.on}}
        return 200, {"name": "l", "state": {"on": self.on, "reachable": True}}


class Homeseer(HttpDevice):
    """HomeSeer's ``/JSON?request=controldevicebylabel|getstatus&ref=ID``."""

    def handle(self, method, path, query, body, headers):
        if path != "/JSON":
            return 404, {"error": "not found"}
        if query.get("request") == "controldevicebylabel":
            self.on = query.get("label", "").lower() == "on"
        return 200, {"Name": "HomeSeer Devices", "Devices": [
            {"ref": int(query.get("ref", 0)), "status": "On" if self.on else "Off",
             "value": 100 if self.on else 0}]}


class Loxone(HttpDevice):
    """Loxone Miniserver v1: ``/jdev/sps/io/OUTPUT[/on|off]``."""

    def handle(self, method, path, query, body, headers):
        parts = path.strip("/").split("/")
        if parts[:3] != ["jdev", "sps", "io"] or len(parts) < 4:
            return 404, {"error": "not found"}
        if len(parts) > 4:
            self.on = parts[4].lower() == "on"
        return 200, {"LL": {"control": path, "value": "1" if self.on else "0",
                            "Code": "200"}}


class SmartThings(HttpDevice):
    """SmartThings: ``POST /v1/devices/ID/commands`` (a list of commands), ``GET
    /v1/devices/ID/components/main/capabilities/switch/status``."""

    def __init__(self, token: str, device: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.token = token
        self.device = device

    def handle(self, method, path, query, body, headers):
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": {"code": "UnauthorizedError"}}
        base = f"/v1/devices/{self.device}"
        if method == "POST" and path == base + "/commands":
            cmd = json.loads(body)[0]["command"]
            self.on = cmd == "on"
            return 200, {"results": [{"id": "x", "status": "ACCEPTED"}]}
        if path == base + "/components/main/capabilities/switch/status":
            return 200, {"switch": {"value": "on" if self.on else "off"}}
        return 404, {"error": {"code": "NotFoundError"}}


class GenericHttp(HttpDevice):
    """A JSON switch: ``GET /on``, ``/off``, ``/status`` -> ``{"power": "ON"|"OFF"}``;
    ``POST /set`` with ``{"power": ...}`` and header ``X-Key``."""

    def handle(self, method, path, query, body, headers):
        if path == "/on":
            self.on = True
        elif path == "/off":
            self.on = False
        elif path == "/set" and method == "POST":
            if headers.get("X-Key") != "sesame":
                return 403, {"error": "forbidden"}
            self.on = json.loads(body)["power"] == "ON"
        elif path != "/status":
            return 404, {"error": "not found"}
        return 200, {"power": "ON" if self.on else "OFF"}


# -- TP-Link Kasa: XOR autokey over TCP ---------------------------------------
def tplink_encrypt(text: str) -> bytes:
    """Kasa framing: 4-byte big-endian length, then XOR autokey from 171."""
    key = 171
    out = bytearray()
    for b in text.encode():
        key ^= b
        out.append(key)
    return struct.pack(">I", len(out)) + bytes(out)


def tplink_decrypt(data: bytes) -> str:
    """Inverse of :func:`tplink_encrypt` for the payload (without the length)."""
    key = 171
    out = bytearray()
    for b in data:
        out.append(key ^ b)
        key = b
    return out.decode()


class TPLink:
    """A Kasa smart plug (or a 2-outlet strip with ``children``) on a TCP port."""

    def __init__(self, children: int = 0) -> None:
        self.on = False
        self.child_on = [False] * children
        self.requests: list[dict] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.device_id = "8006ABCDEF0123456789ABCDEF0123456789ABCD"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = self._read(conn, 4)
                req = json.loads(tplink_decrypt(self._read(conn, struct.unpack(">I", head)[0])))
            except (OSError, ValueError, struct.error):
                return
            self.requests.append(req)
            conn.sendall(tplink_encrypt(json.dumps(self._reply(req))))

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _reply(self, req: dict) -> dict:
        ctx = req.get("context", {}).get("child_ids") or []
        system = req.get("system", {})
        if "set_relay_state" in system:
            state = bool(system["set_relay_state"]["state"])
            if ctx:
                for cid in ctx:
                    self.child_on[int(cid[-2:])] = state
            else:
                self.on = state
            return {"system": {"set_relay_state": {"err_code": 0}}}
        if "get_sysinfo" in system:
            info: dict[str, Any] = {"sw_ver": "1.0.0", "model": "HS100(EU)", "alias": "plug",
                                    "deviceId": self.device_id, "err_code": 0,
                                    "relay_state": int(self.on)}
            if self.child_on:
                info["children"] = [{"id": f"{self.device_id}{i:02d}", "alias": f"p{i}",
                                     "state": int(s)} for i, s in enumerate(self.child_on)]
            return {"system": {"get_sysinfo": info}}
        return {"system": {"err_code": -1, "err_msg": "module not support"}}

    def stop(self) -> None:
        """Close the listening socket."""
        self._closed = True
        self.sock.close()


# -- WLED ---------------------------------------------------------------------
class Wled(HttpDevice):
    """WLED's JSON API: ``GET /json/state``; ``POST /json/state`` merges the
    posted object into the state (``on``, ``bri``, ``ps``, ``seg``...)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.state: dict[str, Any] = {"on": False, "bri": 128, "ps": -1, "seg": [
            {"id": 0, "col": [[255, 160, 0, 0]], "fx": 0, "sx": 128, "ix": 128}]}
        self.posts: list[dict] = []

    def handle(self, method, path, query, body, headers):
        if path not in ("/json/state", "/json/si", "/json"):
            return 404, {"error": "not found"}
        if method == "POST":
            obj = json.loads(body)
            self.posts.append(obj)
            apply_wled(self.state, obj)
            if obj.get("v"):
                return 200, self.state
            return 200, {"success": True}
        return 200, self.state


def apply_wled(state: dict, obj: dict) -> None:
    """Merge a WLED JSON API post into ``state`` (top level and segment 0)."""
    for key, value in obj.items():
        if key == "seg":
            segs = value if isinstance(value, list) else [value]
            for seg in segs:
                target = state["seg"][0]
                target.update({k: v for k, v in seg.items() if k != "id"})
        elif key == "on" and value == "t":
            state["on"] = not state["on"]
        elif key != "v":
            state[key] = value
