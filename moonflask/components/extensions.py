"""Agents, extensions and the bridge websocket.

Spec: web_api.md "Extension APIs" (``server.extensions.list|request``,
``connection.send_event``, ``connection.register_remote_method``),
"Appendix / Agent Events", "Websocket Connections / Bridge websocket".

Agents are persistent connections identified with ``type: agent`` (one per
``client_name``, enforced by ``Connection.identify``).  A relayed request
(``server.extensions.request``) is sent to the agent as a JSON-RPC request
with an id of our own; the agent's reply frame is intercepted before the
JSON-RPC dispatcher sees it and handed back to the caller.

The bridge ``/klippysocket`` opens a NEW unix connection to Klippy for each
client and passes messages through: client frames (text or binary, no ETX)
go to Klippy with an ETX appended; each ETX-terminated Klippy message goes
back as one text frame.  It closes when either side closes, when Klippy
disconnects or shuts down, and when moonflask stops.
"""
from __future__ import annotations

import logging
import socket
from itertools import count
from typing import Any

import gevent
import gevent.event

from .. import jsonutil
from ..api import ApiError

log = logging.getLogger(__name__)


RESERVED_EVENTS = ("connected", "disconnected")
AGENT_TIMEOUT = 60.0    # seconds to wait for an agent's reply
ETX = b"\x03"


class Extensions:
    """Agent registry, request relay and bridge connections.

    Args:
        server: the :class:`moonflask.app.Server`.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self._ids = count(1)
        self._pending: dict[Any, gevent.event.AsyncResult] = {}
        self._remote: dict[str, Any] = {}       # method name -> agent connection
        self.bridges: set[Any] = set()
        ev = server.events
        ev.on("connection:identified", self._on_identified)
        ev.on("connection:closed", self._on_closed)
        ev.on("klippy:disconnected", self.close_bridges)
        ev.on("klippy:shutdown", self.close_bridges)
        ev.on("server:shutdown", self.close_bridges)

    # -- agents -----------------------------------------------------------
    def agents(self) -> list[Any]:
        """The connected agent connections."""
        return [c for c in self.server.connections.all()
                if c.client_type == "agent" and not c.closed]

    @staticmethod
    def identity(conn: Any) -> dict[str, Any]:
        """An agent's ``{"name", "version", "type", "url"}``."""
        return {"name": conn.client_name, "version": conn.version,
                "type": conn.client_type, "url": conn.url}

    def _on_identified(self, conn: Any) -> None:
        if conn.client_type != "agent":
            return
        self._intercept_replies(conn)
        self.broadcast_event(conn, "connected", self.identity(conn), exclude_sender=False)

    def _on_closed(self, conn: Any) -> None:
        if conn.client_type != "agent":
            return
        for name in [n for n, c in self._remote.items() if c is conn]:
            del self._remote[name]
            self.server.klippy.unregister_remote_method(name)
        self.broadcast_event(conn, "disconnected", None, exclude_sender=False)

    def _intercept_replies(self, conn: Any) -> None:
        """Route the agent's JSON-RPC replies (frames with ``result`` or
        ``error`` and no ``method``) to the waiting relay requests."""
        original = conn.handle_frame

        def handle_frame(raw: Any) -> None:
            if b'"method"' not in (raw.encode() if isinstance(raw, str) else raw):
                try:
                    msg = jsonutil.loads(raw)
                except ValueError:
                    msg = None
                if isinstance(msg, dict) and ("result" in msg or "error" in msg):
                    res = self._pending.pop((conn.uid, msg.get("id")), None)
                    if res is not None:
                        res.set(msg)
                    return
            original(raw)
        conn.handle_frame = handle_frame

    def find_agent(self, name: str) -> Any:
        """The agent called ``name``; ApiError 400 when not connected."""
        for conn in self.agents():
            if conn.client_name == name:
                return conn
        raise ApiError(f"Agent {name} not connected", 400)

    def request(self, agent: str, method: str, arguments: Any) -> Any:
        """Relay a JSON-RPC call to ``agent``; returns its result.

        Raises: ApiError 400 unknown agent, the agent's error (its code
        when it is an HTTP-like status, else 400), 504 on timeout, 503
        when the agent disconnects first.
        """
        conn = self.find_agent(agent)
        req_id = next(self._ids)
        res = gevent.event.AsyncResult()
        key = (conn.uid, req_id)
        self._pending[key] = res
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
        if arguments is not None:
            msg["params"] = arguments
        conn.send_text(jsonutil.dumps(msg))
        try:
            with gevent.Timeout(AGENT_TIMEOUT):
                while True:
                    try:
                        reply = res.get(timeout=1.0)
                        break
                    except gevent.Timeout:
                        if conn.closed:
                            raise ApiError(f"Agent {agent} disconnected", 503) from None
        except gevent.Timeout:
            raise ApiError(f"Agent {agent} did not answer {method}", 504) from None
        finally:
            self._pending.pop(key, None)
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            code = err.get("code", 400)
            status = code if isinstance(code, int) and 400 <= code < 600 else 400
            raise ApiError(str(err.get("message", reply["error"])), status)
        return reply.get("result")

    def broadcast_event(self, conn: Any, event: str, data: Any,
                        exclude_sender: bool = True) -> None:
        """Send ``notify_agent_event`` for agent ``conn``; ``data`` None
        omits the field."""
        payload: dict[str, Any] = {"agent": conn.client_name, "event": event}
        if data is not None:
            payload["data"] = data
        text = jsonutil.dumps({"jsonrpc": "2.0", "method": "notify_agent_event",
                               "params": [payload]})
        for other in self.server.connections.all():
            if exclude_sender and other is conn or not other.receives_notifications():
                continue
            other.send_text(text)

    def register_remote_method(self, conn: Any, name: str) -> None:
        """Have Klippy's ``action_call_remote_method(name)`` reach agent
        ``conn`` as a notification ``{"method": name, "params": {...}}``."""
        def call(**params: Any) -> None:
            msg: dict[str, Any] = {"jsonrpc": "2.0", "method": name}
            if params:
                msg["params"] = params
            conn.send_text(jsonutil.dumps(msg))
        self.server.klippy.register_remote_method(name, call)
        self._remote[name] = conn

    # -- bridge -----------------------------------------------------------
    def close_bridges(self) -> None:
        """Close every bridge websocket (Klippy went away / shutdown)."""
        for bridge in list(self.bridges):
            bridge.close()


    def run_bridge(self, ws: Any) -> None:
        """Serve one ``/klippysocket`` client: open a Klippy connection of
        its own and pump frames both ways until either side closes.

        Args:
            ws: the flask-sock websocket (``receive``/``send``/``close``).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.server.klippy_uds_address)
        except OSError as err:
            log.info("bridge: cannot connect to Klippy: %s", err)
            sock.close()
            return
        bridge = Bridge(ws, sock)
        self.bridges.add(bridge)
        reader = gevent.spawn(bridge.klippy_to_client)
        try:
            bridge.client_to_klippy()
        finally:
            bridge.close()
            reader.join(timeout=1)
            self.bridges.discard(bridge)


class Bridge:
    """One ``/klippysocket`` client and its own Klippy connection."""

    def __init__(self, ws: Any, sock: socket.socket) -> None:
        self.ws = ws
        self.sock = sock
        self.closed = False

    def close(self) -> None:
        """Close both sides (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for closer in (self.sock.close, self.ws.close):
            try:
                closer()
            except Exception:
                pass

    def klippy_to_client(self) -> None:
        """Forward each ETX-terminated Klippy message as a text frame."""
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                if ETX not in data:
                    continue
                *frames, buf = buf.split(ETX)
                for frame in frames:
                    if frame:
                        self.ws.send(frame.decode("utf-8", "replace"))
        except Exception as err:
            log.debug("bridge: klippy side ended: %s", err)
        finally:
            self.close()

    def client_to_klippy(self) -> None:
        """Forward each client frame to Klippy with an ETX appended."""
        try:
            while not self.closed:
                msg = self.ws.receive()
                if msg is None:
                    break
                data = msg.encode() if isinstance(msg, str) else bytes(msg)
                self.sock.sendall(data.rstrip(ETX) + ETX)
        except Exception as err:
            log.debug("bridge: client side ended: %s", err)
        finally:
            self.close()


def load_component(server: Any, _config: Any) -> Extensions:
    """Create the extensions component (always loaded)."""
    return Extensions(server)
