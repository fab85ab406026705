"""The Klippy client: one unix-socket connection to Klipper's API server.

Protocol (Klipper's API_Server docs): JSON objects terminated by 0x03 both
ways; ``{"id", "method", "params"}`` requests, replies with ``result`` or
``error: {"error", "message"}``, and unsolicited messages shaped by the
``response_template`` of ``objects/subscribe`` and ``gcode/subscribe_output``.

:class:`Klippy` reconnects forever with backoff, identifies with ``info``,
waits out ``startup``, tracks ``klippy_state`` (``disconnected``,
``startup``, ``ready``, ``error``, ``shutdown``), and sends
``notify_klippy_ready|shutdown|disconnected`` on the transitions.  It keeps
ONE Klippy subscription: the union of the objects every connection and every
component asked for, always with all fields, merged into a status cache; each
client then receives only the objects and fields it subscribed to
(web_api.md "Subscribe to printer object status", "notify_status_update").
"""
from __future__ import annotations

import logging
import os
import socket
from itertools import count
from typing import Any, Callable

import gevent
import gevent.event
import gevent.lock

from .. import jsonutil
from ..api import ApiError

log = logging.getLogger(__name__)

ETX = b"\x03"
STARTUP_POLL = 0.5

DISCONNECTED, STARTUP, READY, ERROR, SHUTDOWN = (
    "disconnected", "startup", "ready", "error", "shutdown")
NOT_CONNECTED = "Klippy Host not connected"
STATUS_METHOD = "process_status_update"
GCODE_METHOD = "process_gcode_response"


class Klippy:
    """The connection to Klippy and everything derived from it.

    Args:
        server: the :class:`moonflask.app.Server` (events, connections).
        uds_address: path of Klippy's API socket (``klippy_uds_address``).

    Attributes:
        state: one of the klippy_state values above.
        connected: True while the socket is open.
        info: the last ``info`` reply (hostname, software_version, ...).
        status: ``{object: {field: value}}`` for every subscribed object.
        eventtime: Klippy's eventtime of the last status (seconds, monotonic).
    """

    def __init__(self, server: Any, uds_address: str) -> None:
        self.server = server
        self.uds_address = uds_address
        self.state = DISCONNECTED
        self.state_message = "Klippy Disconnected"
        self.connected = False
        self.info: dict[str, Any] = {}
        self.objects: list[str] = []
        self.status: dict[str, dict[str, Any]] = {}
        self.eventtime = 0.0
        self._sock: socket.socket | None = None
        self._send_lock = gevent.lock.Semaphore()
        self._sub_lock = gevent.lock.Semaphore()
        self._ids = count(1)
        self._pending: dict[int, gevent.event.AsyncResult] = {}
        self._klippy_subscribed: set[str] = set()
        self._internal_subs: dict[str, set[str]] = {}
        self._remote_methods: dict[str, Callable[..., Any]] = {}
        self._ready_event = gevent.event.Event()
        self._worker: Any = None
        server.events.on("connection:closed", lambda conn: self._schedule_resubscribe())

    # -- lifetime --------------------------------------------------------
    def start(self) -> None:
        """Start the connection worker (``workers/klippy.py``: reconnects forever)."""
        from ..workers import klippy as klippy_worker
        self._worker = self.server.workers.start("klippy", klippy_worker.run, self)

    def stop(self) -> None:
        """Close the socket and stop reconnecting."""
        if self._worker is not None:
            self._worker.stop()
        self._close_socket()

    def serve(self, sock: socket.socket) -> None:
        """Identify and serve one connected socket until Klippy closes it
        (a socket error ends the session too, logged)."""
        init = gevent.spawn(self._initialize)
        try:
            self._read_loop(sock)
        except OSError as err:
            log.info("Klippy socket error: %s", err)
        finally:
            init.kill(block=False)

    def connect(self) -> socket.socket | None:
        """Open Klippy's socket; None when it is absent or refuses."""
        if not os.path.exists(self.uds_address):
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.uds_address)
        except OSError:
            sock.close()
            return None
        self._sock = sock
        self.connected = True
        log.info("Klippy connection established")
        self.server.events.emit("klippy:connected")
        return sock

    def _read_loop(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
            if ETX not in data:
                continue
            *frames, buf = buf.split(ETX)
            for frame in frames:
                if frame:
                    self._handle_message(frame)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def on_disconnect(self) -> None:
        """Reset every piece of state derived from the connection and announce
        the loss (``notify_klippy_disconnected``) when Klippy had identified."""
        self._close_socket()
        was = self.state
        self.connected = False
        self.state = DISCONNECTED
        self.state_message = "Klippy Disconnected"
        self.info = {}
        self.status = {}
        self._klippy_subscribed = set()
        self._ready_event.clear()
        pending, self._pending = self._pending, {}
        for res in pending.values():
            res.set_exception(ApiError(NOT_CONNECTED, 503))
        log.info("Klippy connection closed (was %s)", was)
        if was != DISCONNECTED:  # announce only connections that got as far as `info`
            self.server.events.emit("klippy:disconnected")
            self.server.events.notify("notify_klippy_disconnected")

    # -- messages --------------------------------------------------------
    def _handle_message(self, frame: bytes) -> None:
        try:
            msg = jsonutil.loads(frame)
        except ValueError:
            log.warning("undecodable message from Klippy: %r", frame[:200])
            return
        if "id" in msg and msg.get("method") is None:
            res = self._pending.pop(msg["id"], None)
            if res is None:
                return
            if "error" in msg:
                err = msg["error"]
                text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                res.set_exception(ApiError(text, 400))
            else:
                res.set(msg.get("result"))
            return
        method = msg.get("method")
        params = msg.get("params", {})
        if method == STATUS_METHOD:
            self._on_status(params.get("status", {}), params.get("eventtime", 0.0))
        elif method == GCODE_METHOD:
            self.server.events.emit("klippy:gcode_response", params.get("response", ""))
        elif method in self._remote_methods:
            gevent.spawn(self._call_remote, method, params)

    def _call_remote(self, method: str, params: dict) -> None:
        try:
            self._remote_methods[method](**params)
        except Exception:
            log.exception("remote method %s failed", method)

    # -- requests --------------------------------------------------------
    def request(self, method: str, params: dict | None = None,
                timeout: float | None = None) -> Any:
        """Send one request to Klippy and wait for its result.

        Args:
            method: Klippy's endpoint, e.g. ``objects/query``.
            params: its parameters.
            timeout: seconds to wait; None waits as long as Klippy takes
                (``gcode/script`` of a long move).
        Returns: the ``result`` value.
        Raises:
            ApiError 503 ``Klippy Disconnected`` when not connected or the
            connection drops; 400 with Klippy's message on a Klippy error;
            504 on timeout.
        """
        sock = self._sock
        if sock is None:
            raise ApiError(NOT_CONNECTED, 503)
        req_id = next(self._ids)
        res = gevent.event.AsyncResult()
        self._pending[req_id] = res
        data = jsonutil.dumpb({"id": req_id, "method": method, "params": params or {}}) + ETX
        try:
            with self._send_lock:
                sock.sendall(data)
        except OSError:
            self._pending.pop(req_id, None)
            raise ApiError(NOT_CONNECTED, 503) from None
        try:
            return res.get(timeout=timeout)
        except gevent.Timeout:
            self._pending.pop(req_id, None)
            raise ApiError(f"Klippy request {method} timed out", 504) from None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until klippy_state is ready; returns False on timeout."""
        return self._ready_event.wait(timeout)

    # -- initialisation --------------------------------------------------
    def _initialize(self) -> None:
        try:
            self.request("gcode/subscribe_output", {"response_template": {"method": GCODE_METHOD}})
            while True:
                info = self.request("info", {"client_info": {
                    "program": "Moonraker", "version": self.server.version}})
                self._set_info(info)
                if self.state != STARTUP:
                    break
                gevent.sleep(STARTUP_POLL)
            self.objects = self.request("objects/list").get("objects", [])
            for name in self._remote_methods:
                self._register_remote(name)
            with self._sub_lock:
                self._klippy_subscribed = set()
                self._resubscribe_locked()
            self.server.events.emit("klippy:identified")
            if self.state == READY:
                self._on_ready()
            elif self.state == SHUTDOWN:
                self.server.events.emit("klippy:shutdown")
        except ApiError as err:
            log.info("Klippy initialisation interrupted: %s", err.message)

    def _set_info(self, info: dict) -> None:
        self.info = info
        self.state = info.get("state", ERROR)
        self.state_message = info.get("state_message", "")

    def _on_ready(self) -> None:
        self._ready_event.set()
        log.info("Klippy ready")
        self.server.events.emit("klippy:ready")
        self.server.events.notify("notify_klippy_ready")

    def _register_remote(self, name: str) -> None:
        try:
            self.request("register_remote_method", {
                "response_template": {"method": name}, "remote_method": name})
        except ApiError as err:
            log.warning("register_remote_method %s failed: %s", name, err.message)

    def register_remote_method(self, name: str, callback: Callable[..., Any]) -> None:
        """Have Klippy call ``callback(**params)`` when a macro runs
        ``action_call_remote_method("name", ...)``; re-registered after each
        reconnect.  Raises ApiError 400 when ``name`` is taken."""
        if name in self._remote_methods:
            raise ApiError(f"Remote method ({name}) already registered", 400)
        self._remote_methods[name] = callback
        if self.connected and self.state != STARTUP:
            gevent.spawn(self._register_remote, name)

    def unregister_remote_method(self, name: str) -> None:
        """Forget a remote method (Klippy keeps it until it restarts)."""
        self._remote_methods.pop(name, None)

    # -- status and subscriptions -----------------------------------------
    def _on_status(self, status: dict, eventtime: float) -> None:
        self.eventtime = eventtime
        for name, fields in status.items():
            cached = self.status.get(name)
            if cached is None:
                self.status[name] = dict(fields)
            else:
                cached.update(fields)
        webhooks = status.get("webhooks")
        if webhooks and "state" in webhooks:
            self._on_webhooks_state(webhooks["state"], webhooks.get("state_message", ""))
        self.server.events.emit("klippy:status_update", status, eventtime)
        self._fan_out(status, eventtime)

    def _on_webhooks_state(self, state: str, message: str) -> None:
        old = self.state
        self.state = state
        if message:
            self.state_message = message
        if state == old:
            return
        if state == SHUTDOWN:
            self._ready_event.clear()
            log.info("Klippy shutdown: %s", message)
            self.server.events.emit("klippy:shutdown")
            self.server.events.notify("notify_klippy_shutdown")
        elif state == READY and old == STARTUP:
            self._on_ready()

    def _fan_out(self, status: dict, eventtime: float) -> None:
        for conn in self.server.connections.all():
            subs = conn.subscriptions
            if not subs or not conn.receives_notifications():
                continue
            out = filter_status(status, subs, skip_empty=True)
            if out:
                conn.send_text(jsonutil.dumps({"jsonrpc": "2.0", "method": "notify_status_update",
                                               "params": [out, eventtime]}))

    def wanted_objects(self) -> set[str]:
        """Every object some connection or component subscribed to, plus
        ``webhooks`` (klippy_state tracking)."""
        wanted = {"webhooks"}
        for conn in self.server.connections.all():
            wanted.update(conn.subscriptions)
        for objs in self._internal_subs.values():
            wanted.update(objs)
        return wanted

    def _resubscribe_locked(self) -> None:
        wanted = self.wanted_objects()
        if wanted == self._klippy_subscribed:
            return
        result = self.request("objects/subscribe", {
            "objects": {name: None for name in sorted(wanted)},
            "response_template": {"method": STATUS_METHOD}})
        self.eventtime = result.get("eventtime", self.eventtime)
        self.status = {k: dict(v) for k, v in result.get("status", {}).items()}
        self._klippy_subscribed = wanted
        # Components tracking state see the fresh snapshot as an update.
        self.server.events.emit("klippy:status_update", self.status, self.eventtime)
        webhooks = self.status.get("webhooks", {})
        if "state" in webhooks and self.state not in (STARTUP,):
            self._on_webhooks_state(webhooks["state"], webhooks.get("state_message", ""))

    def _schedule_resubscribe(self) -> None:
        # Shrinking the union is not urgent; growing it happens in subscribe().
        if self.connected and self.state != STARTUP:
            gevent.spawn(self._shrink_subscription)

    def _shrink_subscription(self) -> None:
        with self._sub_lock:
            if self._klippy_subscribed - self.wanted_objects():
                try:
                    self._resubscribe_locked()
                except ApiError:
                    pass

    def subscribe(self, objects: dict[str, list[str] | None], conn: Any = None) -> dict:
        """Set the subscription of ``conn`` (None: none) and return the
        current status of the requested objects and fields.

        Args:
            objects: ``{object_name: [fields] | None}``; ``{}`` cancels.
        Returns: ``{"eventtime": float, "status": {...}}`` (printer.objects.subscribe).
        Raises: ApiError 503 when Klippy is disconnected.
        """
        if self._sock is None:
            raise ApiError(NOT_CONNECTED, 503)
        if conn is not None:
            conn.subscriptions = dict(objects)
        with self._sub_lock:
            if not set(objects) <= self._klippy_subscribed:
                self._resubscribe_locked()
        if conn is not None and not objects:
            gevent.spawn(self._shrink_subscription)
        return {"eventtime": self.eventtime, "status": filter_status(self.status, objects)}

    def add_internal_subscription(self, owner: str, objects: set[str]) -> None:
        """Keep ``objects`` in the Klippy subscription on behalf of a component
        (temperature store, job state); updates arrive as the
        ``klippy:status_update`` event."""
        self._internal_subs[owner] = set(objects)
        if self.connected and self.state != STARTUP:
            with self._sub_lock:
                try:
                    self._resubscribe_locked()
                except ApiError:
                    pass


def filter_status(status: dict, subs: dict[str, list[str] | None],
                  skip_empty: bool = False) -> dict:
    """The part of ``status`` a subscription asks for.

    Args:
        status: ``{object: {field: value}}``.
        subs: ``{object: [fields] | None}`` (None: every field).
        skip_empty: leave out objects with nothing to report (updates).
    """
    out: dict[str, Any] = {}
    for name, fields in subs.items():
        values = status.get(name)
        if values is None:
            if not skip_empty and name in status:
                out[name] = {}
            continue
        if fields is None:
            if values or not skip_empty:
                out[name] = dict(values) if not skip_empty else values
            continue
        picked = {f: values[f] for f in fields if f in values}
        if picked or not skip_empty:
            out[name] = picked
    return out
