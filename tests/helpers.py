"""Test clients and process control for moonflask's tests.

Everything here talks to real processes over real sockets: a moonflask
server started with ``python -m moonflask``, the simulated printer (a real
Klippy), the websocket and the unix socket.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import requests
import websocket

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import sim_printer  # noqa: E402


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


GCODE_MIB = (b"G1 X10.000 Y10.000 E0.12345\n" * 40000)[:1024 * 1024]   # 1 MiB of G-code


def stream_upload(port: int, name: str, mib: int, timeout: float = 300) -> int:
    """Stream a multipart ``POST /server/files/upload`` of ``mib`` MiB of
    G-code as file ``name`` to the server on 127.0.0.1:``port``, one MiB at
    a time (the client holds one MiB); returns the HTTP status."""
    boundary = "moonflaskuploadboundary42"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.putrequest("POST", "/server/files/upload")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + mib * len(GCODE_MIB) + len(tail)))
    conn.endheaders()
    conn.send(head)
    for _ in range(mib):
        conn.send(GCODE_MIB)
    conn.send(tail)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


class RpcError(Exception):
    """A JSON-RPC error reply: ``.code``, ``.message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class WsClient:
    """A websocket JSON-RPC client; notifications collect in ``.notifications``.

    Args:
        url: ``ws://host:port/websocket``.
        headers: extra upgrade headers (``["Connection: keep-alive, Upgrade"]``).
        origin: the page's Origin (default: websocket-client's own).
        read: False for a client that never reads (slow-client tests).
    """

    def __init__(self, url: str, headers: list[str] | None = None, read: bool = True,
                 timeout: float = 10.0, origin: str | None = None) -> None:
        # ``origin`` replaces the client's own Origin header (an "Origin: ..."
        # in ``headers`` would be sent as a second one)
        kw = {"origin": origin} if origin else {}
        self.ws = websocket.create_connection(url, header=headers or [], timeout=timeout, **kw)
        self._ids = iter(range(1, 10**9))
        self._replies: dict[Any, "queue.Queue[dict]"] = {}
        self._lock = threading.Lock()
        self.notifications: "queue.Queue[dict]" = queue.Queue()
        self.closed = threading.Event()
        if read:
            threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        try:
            while True:
                text = self.ws.recv()
                if not text:
                    break
                msg = json.loads(text)
                if isinstance(msg, list) or "id" in msg:
                    key = msg[0].get("id") if isinstance(msg, list) and msg else msg.get("id")
                    with self._lock:
                        q = self._replies.setdefault(key, queue.Queue())
                    q.put(msg)
                else:
                    self.notifications.put(msg)
        except Exception:
            pass
        finally:
            self.closed.set()

    def send_raw(self, text: str) -> None:
        """Send one text frame as is."""
        self.ws.send(text)

    def reply_for(self, req_id: Any, timeout: float = 10.0) -> Any:
        """Wait for the reply whose id is ``req_id`` (batch: first id)."""
        with self._lock:
            q = self._replies.setdefault(req_id, queue.Queue())
        return q.get(timeout=timeout)

    def request(self, method: str, params: dict | None = None, timeout: float = 10.0) -> dict:
        """Send a request, return the whole reply object."""
        req_id = next(self._ids)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
        if params is not None:
            msg["params"] = params
        self.ws.send(json.dumps(msg))
        return self.reply_for(req_id, timeout)

    def call(self, method: str, params: dict | None = None, timeout: float = 10.0) -> Any:
        """Send a request, return its result; raises RpcError on an error reply."""
        reply = self.request(method, params, timeout)
        if "error" in reply:
            raise RpcError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def wait_notification(self, method: str, timeout: float = 10.0,
                          predicate: Any = None) -> dict:
        """The next notification named ``method`` (others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} within {timeout}s")
            msg = self.notifications.get(timeout=left)
            if msg.get("method") == method and (predicate is None or predicate(msg)):
                return msg

    def drain(self) -> list[dict]:
        """Every notification received so far."""
        out = []
        while True:
            try:
                out.append(self.notifications.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Close the socket."""
        try:
            self.ws.close()
        except Exception:
            pass


class UnixClient:
    """A JSON-RPC client of ``comms/moonraker.sock`` (ETX framing)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.ids = iter(range(1, 10**9))
        self.notifications: list[dict] = []

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (add the ETX yourself)."""
        self.sock.sendall(data)

    def recv(self) -> Any:
        """The next decoded message."""
        while b"\x03" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        frame, _, self.buf = self.buf.partition(b"\x03")
        return json.loads(frame)

    def call(self, method: str, params: dict | None = None) -> Any:
        """Request ``method`` and return its result (RpcError on error)."""
        req_id = next(self.ids)
        self.sock.sendall(json.dumps({"jsonrpc": "2.0", "method": method,
                                      "params": params or {}, "id": req_id}).encode() + b"\x03")
        while True:
            msg = self.recv()
            if msg.get("id") == req_id:
                if "error" in msg:
                    raise RpcError(msg["error"]["code"], msg["error"]["message"])
                return msg["result"]
            self.notifications.append(msg)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class Printer:
    """The simulated printer (a real Klippy) in ``workdir``."""

    def __init__(self, workdir: str, gcodes: str) -> None:
        self.workdir = workdir
        self.gcodes = gcodes
        self.socket_path = os.path.join(workdir, "klippy.sock")
        self.handle = None

    def start(self, wait: bool = True) -> "Printer":
        """Start Klippy; wait until it is ready."""
        self.handle = sim_printer.start(self.workdir, self.gcodes,
                                        socket_path=self.socket_path)
        if wait:
            sim_printer.wait_ready(self.socket_path, 60, self.handle)
        return self

    def kill(self) -> None:
        """SIGKILL Klippy (a crash, as the API server sees it)."""
        if self.handle is not None:
            sim_printer.kill(self.handle)

    def stop(self) -> None:
        """Stop Klippy."""
        if self.handle is not None:
            sim_printer.stop(self.handle)
            self.handle = None


class Moonflask:
    """A moonflask server process with its own ``printer_data``.

    Args:
        data_path: the data folder (config/ gcodes/ logs/ ... are made).
        klippy_socket: Klippy's API socket path.
        config: extra moonraker.conf text appended after ``[server]``; without
            an ``[authorization]`` section, one trusting loopback is added.
        server_options: extra lines for ``[server]``.
    """

    def __init__(self, data_path: str, klippy_socket: str, config: str = "",
                 server_options: str = "", args: list[str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.data_path = data_path
        self.port = free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.ws_url = f"ws://{host}:{self.port}/websocket"
        self.unix_path = os.path.join(data_path, "comms", "moonraker.sock")
        self.log_path = os.path.join(data_path, "logs", "moonraker.log")
        os.makedirs(os.path.join(data_path, "config"), exist_ok=True)
        self.config_path = os.path.join(data_path, "config", "moonraker.conf")
        if "[authorization]" not in config:
            # Authorization is always in force: the test client is a trusted local one.
            config += "\n[authorization]\ntrusted_clients:\n  127.0.0.0/8\n  ::1/128\n"
        with open(self.config_path, "w") as fh:
            fh.write(f"[server]\nhost: {host}\nport: {self.port}\n"
                     f"klippy_uds_address: {klippy_socket}\n{server_options}\n\n{config}\n")
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self._clients: list[Any] = []

    def start(self, timeout: float = 60.0) -> "Moonflask":
        """Start the process and wait until ``/server/info`` answers (any
        status).  The deadline is generous (the machine may be busy); a
        process that exits fails at once, with what it printed."""
        out = open(os.path.join(self.data_path, "moonflask.stdout"), "ab")
        python = os.environ.get("MOONFLASK_PYTHON", sys.executable)
        self.proc = subprocess.Popen(
            [python, "-m", "moonflask", "-d", self.data_path, *self.args],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        started = time.monotonic()
        deadline = started + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moonflask exited with {self.proc.returncode}: "
                                   + self.output())
            try:
                requests.get(self.url + "/server/info", timeout=5)
                return self
            except requests.RequestException as err:
                last = err
                time.sleep(0.05)
        raise TimeoutError(f"moonflask did not answer within {timeout:.0f} s "
                           f"(last: {last!r}): " + self.output())

    def output(self) -> str:
        """What the process printed (stdout + stderr)."""
        try:
            with open(os.path.join(self.data_path, "moonflask.stdout")) as fh:
                return fh.read()[-5000:]
        except OSError:
            return ""

    def get(self, path: str, **kw: Any) -> requests.Response:
        """HTTP GET ``path``."""
        return requests.get(self.url + path, timeout=kw.pop("timeout", 15), **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        """HTTP POST ``path``."""
        return requests.post(self.url + path, timeout=kw.pop("timeout", 15), **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        """HTTP DELETE ``path``."""
        return requests.delete(self.url + path, timeout=kw.pop("timeout", 15), **kw)

    def result(self, method: str, path: str, **kw: Any) -> Any:
        """``result`` of a successful HTTP call (asserts status 200)."""
        resp = requests.request(method, self.url + path, timeout=kw.pop("timeout", 15), **kw)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        return resp.json()["result"]

    def ws(self, **kw: Any) -> WsClient:
        """A new websocket client (closed with the server)."""
        client = WsClient(self.ws_url, **kw)
        self._clients.append(client)
        return client

    def unix(self) -> UnixClient:
        """A new unix-socket client."""
        client = UnixClient(self.unix_path)
        self._clients.append(client)
        return client

    def wait_klippy_state(self, state: str, timeout: float = 60.0) -> dict:
        """Poll ``server.info`` until ``klippy_state`` is ``state``.

        Fails at once when the process exited; after ``timeout`` seconds
        (generous: the machine may be busy) with the last answer (status
        and body, e.g. a 401 when the server does not trust the client)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"moonflask exited with {self.proc.returncode}: "
                                   + self.output())
            try:
                resp = self.get("/server/info")
                last = (resp.status_code, resp.text[:300])
                info = resp.json()["result"]
                if info["klippy_state"] == state:
                    return info
            except (KeyError, TypeError, ValueError):
                pass        # not a result (e.g. a 401): ``last`` shows what it was
            except requests.RequestException as err:
                last = repr(err)
            time.sleep(0.1)
        raise TimeoutError(f"klippy_state not {state} within {timeout:.0f} s; "
                           f"last answer: {last}")

    def stop(self) -> None:
        """Close clients, SIGTERM the process (SIGKILL after 5 s)."""
        for c in self._clients:
            c.close()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
