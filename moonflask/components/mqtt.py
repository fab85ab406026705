"""The ``[mqtt]`` component: one MQTT client for the whole server.

Spec: configuration.md ``[mqtt]`` (every option), "Publishing topics from
Klipper" (the ``publish_mqtt_topic`` remote method); web_api.md "JSON-RPC API
Overview" (the ``mqtt`` transport, ``mqtt_timestamp``), "MQTT APIs".

Topics (``{instance}`` is ``instance_name``, the hostname by default):

- ``{instance}/moonraker/api/request`` -> ``{instance}/moonraker/api/response``:
  JSON-RPC requests served by ``server.jsonrpc`` with transport ``mqtt``.  With
  MQTT v5 a request's *Response Topic* and *Correlation Data* properties are
  honoured (the reply goes there, carrying the same correlation data).
- ``{instance}/moonraker/status``: ``{"server": "online"}`` retained once
  connected, ``{"server": "offline"}`` retained on a clean stop and as the
  last will (the broker publishes it when moonflask dies).
- ``{instance}/klipper/status``: ``{"eventtime", "status": {obj: {field: v}}}``
  with the changed fields of ``status_objects``; with ``publish_split_status``
  ``{instance}/klipper/state/{obj}/{field}``: ``{"eventtime", "value"}``,
  retained (as the reference does; the combined topic is not retained).
- ``{instance}/moonraker/klippy_state`` (moonflask's own, retained):
  ``{"klippy_state", "state_message", "timestamp"}`` on every Klippy state
  change (startup, ready, shutdown, error, disconnected).
- moonflask's own options ``enable_ha_discovery`` (default False) and
  ``ha_discovery_prefix`` (default ``homeassistant``): a retained Home
  Assistant discovery config ``{prefix}/sensor/{instance}/{object}_{field}/config``
  for every tracked field (its state is the split-status topic, published
  then even without ``publish_split_status``) and for the klippy_state topic.

The network loop runs in ONE supervised greenlet (``moonflask/workers/mqtt.py``):
connecting, reading, keepalive and subscription changes happen there.  Other
greenlets queue commands with :meth:`MQTTClient.publish` / :meth:`subscribe`;
while connected, a publish is also handed to paho at once by the greenlet
that makes it (paho's socket is non-blocking, so the call never yields and
cannot interleave with the worker's): a Klippy status change reaches the
broker without a hop to the worker (bench/bench_mqtt.py).  While the broker is away,
publishes wait in a bounded queue (``MAX_PENDING`` messages; when full a
publish is refused with ApiError 529 naming the broker) and are sent in order
after the reconnect; Klippy status changes made meanwhile are merged and
published once, as the latest values, after the reconnect.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from typing import Any, Callable

import gevent
import gevent.event
import gevent.pool
import gevent.queue
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..api import MQTT, ApiError
from ..jsonrpc import PARSE_ERROR, error_reply
from ..config import ConfigError
from .. import jsonutil

log = logging.getLogger(__name__)

PROTOCOLS = {"v3.1": paho.MQTTv31, "v3.1.1": paho.MQTTv311, "v5": paho.MQTTv5}
MAX_PENDING = 4096          # publishes kept while the broker is unreachable
API_CONCURRENCY = 256       # API requests over MQTT executed at once
DUPLICATE_WINDOW = 1000     # mqtt_timestamps remembered for duplicate detection
DUPLICATE_ERROR = -10000


def parse_status_objects(spec: dict[str, str | None]) -> dict[str, list[str] | None]:
    """``status_objects`` read as a dict (``webhooks`` -> None,
    ``toolhead=position,homed_axes`` -> ``"position,homed_axes"``) as
    ``{object: [fields] | None}`` (None: every field)."""
    return {name: None if fields is None else
            [f.strip() for f in fields.split(",") if f.strip()]
            for name, fields in spec.items()}


def encode_payload(payload: Any) -> bytes:
    """A publish payload as bytes: None is empty, str as UTF-8, everything
    else (numbers, booleans, objects, arrays) JSON encoded."""
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return jsonutil.dumpb(payload)


def decode_payload(raw: bytes) -> Any:
    """A received payload: its JSON value when it parses, else its text."""
    try:
        return jsonutil.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def validate_topic(topic: str, wildcards: bool = False) -> None:
    """Raise ApiError 400 for an empty topic or (unless allowed) wildcards."""
    if not topic:
        raise ApiError("Topic must not be empty", 400)
    if not wildcards and ("+" in topic or "#" in topic):
        raise ApiError("Wildcards may not be used", 400)


class _Publish:
    """One queued publish and the result its caller may wait on."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "done")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool,
                 properties: Any = None) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.properties = properties
        self.done = gevent.event.Event()


class MQTTClient:
    """The MQTT component (Moonraker's name: ``mqtt``).

    Args:
        server: the :class:`moonflask.app.Server`.
        config: the ``[mqtt]`` config section.
    Raises:
        ConfigError: a missing ``address``, a bad ``mqtt_protocol``, an
            ``instance_name`` with wildcards, a qos outside 0..2.
    """

    def __init__(self, server: Any, config: Any) -> None:
        self.server = server
        self.address: str = config.get("address")
        self.port: int = config.getint("port", 1883, minval=1, maxval=65535)
        self.username: str | None = config.get("username", None)
        password_file = config.get("password_file", None)
        self.password: str | None = config.get("password", None)
        if self.password is None and password_file:
            try:
                with open(os.path.expanduser(password_file), encoding="utf-8") as fh:
                    self.password = fh.read().strip()
            except OSError as err:
                raise ConfigError(f"[mqtt]: unable to read password_file: {err.strerror}")
        protocol = config.get("mqtt_protocol", "v3.1.1")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"[mqtt]: Invalid value '{protocol}' for option 'mqtt_protocol'"
                              f"; must be one of {list(PROTOCOLS)}")
        self.protocol = PROTOCOLS[protocol]
        self.client_id: str = config.get("client_id", "")   # "": paho picks a random id
        self.enable_tls: bool = config.getboolean("enable_tls", False)
        self.instance_name: str = config.get("instance_name", socket.gethostname())
        if not self.instance_name or "+" in self.instance_name or "#" in self.instance_name:
            raise ConfigError(f"[mqtt]: invalid instance_name '{self.instance_name}': "
                              "it may not be empty nor contain wildcards (+ or #)")
        self.default_qos: int = config.getint("default_qos", 0, minval=0, maxval=2)
        self.api_qos: int = config.getint("api_qos", self.default_qos, minval=0, maxval=2)
        self.status_objects = parse_status_objects(config.getdict("status_objects", {}))
        self.status_interval: float = config.getfloat("status_interval", 0.0, minval=0.0)
        self.publish_split_status: bool = config.getboolean("publish_split_status", False)
        self.enable_api: bool = config.getboolean("enable_moonraker_api", True)
        # moonflask's own: Home Assistant MQTT discovery of the tracked fields
        self.ha_discovery: bool = config.getboolean("enable_ha_discovery", False)
        self.ha_prefix: str = config.get("ha_discovery_prefix", "homeassistant")
        validate_topic(self.ha_prefix)
        prefix = self.instance_name
        self.api_request_topic = f"{prefix}/moonraker/api/request"
        self.api_response_topic = f"{prefix}/moonraker/api/response"
        self.status_topic = f"{prefix}/moonraker/status"
        self.klipper_status_topic = f"{prefix}/klipper/status"
        self.klipper_state_prefix = f"{prefix}/klipper/state"
        self.klippy_state_topic = f"{prefix}/moonraker/klippy_state"

        self.connected = False
        self.connect_count = 0
        self._pending: deque[_Publish] = deque()
        self._inflight: dict[int, _Publish] = {}
        self._subs: dict[str, dict[str, Any]] = {}   # topic -> {"qos", "callbacks"}
        self._sub_changes: "OrderedDict[str, int | None]" = OrderedDict()
        self._commands: list[Callable[[], Any]] = []
        self.wake_socket, self._wake_w = socket.socketpair()
        self.wake_socket.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._api_pool = gevent.pool.Pool(API_CONCURRENCY)
        self._seen_ts: deque[Any] = deque(maxlen=DUPLICATE_WINDOW)
        self._status_backlog: dict[str, dict[str, Any]] = {}
        self._last_status: dict[str, dict[str, Any]] = {}
        self._announced: set[tuple[str, str]] = set()   # HA discovery configs sent
        self._status_batch: dict[str, dict[str, Any]] = {}
        self._status_batch_time = 0.0
        self._status_timer: gevent.Greenlet | None = None
        self._stopping = False
        self.client: paho.Client | None = None   # the worker's, one per connection

        klippy = server.klippy
        if self.status_objects:
            klippy.add_internal_subscription("mqtt", set(self.status_objects))
        klippy.register_remote_method("publish_mqtt_topic", self._remote_publish)
        ev = server.events
        ev.on("klippy:status_update", self._on_status_update)
        ev.on("klippy:connected", lambda: self._publish_klippy_state("startup"))
        ev.on("klippy:identified", self._on_klippy_identified)
        ev.on("klippy:ready", lambda: self._publish_klippy_state("ready"))
        ev.on("klippy:shutdown", lambda: self._publish_klippy_state("shutdown"))
        ev.on("klippy:disconnected", self._on_klippy_disconnected)
        ev.on("server:shutdown", self.close)
        if self.enable_api:
            self.subscribe(self.api_request_topic, self._on_api_request, self.api_qos)
        from ..workers.mqtt import run
        self.worker = server.workers.start("mqtt", run, self)

    # -- the paho client (used only by the worker greenlet) -----------------
    def make_client(self) -> paho.Client:
        """A new paho client with the credentials, TLS, last will and callbacks
        (the worker makes one per connection)."""
        kwargs: dict[str, Any] = {"protocol": self.protocol}
        if self.protocol != paho.MQTTv5:
            kwargs["clean_session"] = True
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, **kwargs)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.enable_tls:
            client.tls_set()   # the system's CA store (SSL_CERT_FILE may name another)
        client.will_set(self.status_topic, jsonutil.dumpb({"server": "offline"}),
                        self.default_qos, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, reason: Any,
                    _props: Any = None) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s",
                        self.address, self.port, reason)
            return
        self.connected = True
        self.connect_count += 1
        log.info("MQTT client connected to %s:%d", self.address, self.port)
        self._sub_changes.clear()
        for topic, sub in self._subs.items():
            client.subscribe(topic, sub["qos"])
        client.publish(self.status_topic, jsonutil.dumpb({"server": "online"}),
                       self.default_qos, retain=True)
        # the broker's retained copy may be gone (restarted without persistence)
        client.publish(self.klippy_state_topic,
                       self._klippy_state_payload(self.server.klippy.state),
                       self.default_qos, retain=True)
        self._announced.clear()   # the broker may have lost the retained configs
        if self.ha_discovery:
            self._announce(None, "klippy_state")
            for name, fields in self._last_status.items():
                for field in fields:
                    self._announce(name, field)
        if self._status_backlog:
            backlog, self._status_backlog = self._status_backlog, {}
            self._publish_status(backlog, self.server.klippy.eventtime)
        self.flush()
        self.server.events.emit("mqtt:connected")

    def _on_disconnect(self, _client: Any, _ud: Any, _flags: Any, reason: Any,
                       _props: Any = None) -> None:
        self.connection_lost(reason)

    def connection_lost(self, reason: Any = "connection closed") -> None:
        """The connection ended (paho's on_disconnect, or the worker after a
        socket error): QoS 1/2 messages not yet acknowledged go back to the
        front of the queue."""
        was = self.connected
        self.connected = False
        # QoS 1/2 messages not acknowledged yet are sent again after the reconnect.
        inflight = sorted(self._inflight.items())
        self._inflight.clear()
        for _mid, pub in reversed(inflight):
            self._pending.appendleft(pub)
        if was:
            log.info("MQTT client disconnected from %s:%d: %s", self.address, self.port, reason)
            self.server.events.emit("mqtt:disconnected")

    def _on_publish(self, _client: Any, _ud: Any, mid: int, _reason: Any,
                    _props: Any = None) -> None:
        pub = self._inflight.pop(mid, None)
        if pub is not None:
            pub.done.set()

    def _on_message(self, _client: Any, _ud: Any, msg: Any) -> None:
        for sub_topic, sub in list(self._subs.items()):
            if sub_topic == msg.topic or paho.topic_matches_sub(sub_topic, msg.topic):
                for cb in list(sub["callbacks"]):
                    try:
                        cb(msg.topic, bytes(msg.payload), getattr(msg, "properties", None))
                    except Exception:
                        log.exception("MQTT callback for %s failed", msg.topic)

    def flush(self) -> None:
        """Hand queued subscription changes and publishes to paho (worker
        greenlet only, while connected)."""
        client = self.client
        while self._sub_changes and self.connected:
            topic, qos = self._sub_changes.popitem(last=False)
            if qos is None:
                client.unsubscribe(topic)
            else:
                client.subscribe(topic, qos)
        self._send_pending()
        commands, self._commands = self._commands, []
        for cmd in commands:
            cmd()

    def _send_pending(self) -> None:
        """Hand the queued publishes to paho, in order, while connected
        (paho writes what the socket takes and keeps the rest)."""
        client = self.client
        while self._pending and self.connected:
            pub = self._pending.popleft()
            info = client.publish(pub.topic, pub.payload, pub.qos, pub.retain,
                                  properties=pub.properties)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self._pending.appendleft(pub)
                break
            if pub.qos == 0:
                pub.done.set()
            else:
                self._inflight[info.mid] = pub

    def wake(self) -> None:
        """Wake the worker out of its select (new work queued)."""
        if self._woken:
            return
        self._woken = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def clear_wake(self) -> None:
        """Drain the wake-up socket (worker greenlet)."""
        self._woken = False
        try:
            while self.wake_socket.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- publishing ----------------------------------------------------------
    def publish(self, topic: str, payload: Any = None, qos: int | None = None,
                retain: bool = False, properties: Any = None) -> _Publish:
        """Queue a publish; returns a handle whose ``done`` event is set once
        the message was written (QoS 0) or acknowledged (QoS 1/2).

        Args:
            topic: the topic (no wildcards); payload: see :func:`encode_payload`.
            qos: 0..2 (default ``default_qos``); retain: the retain flag.
        Raises:
            ApiError 400 for a bad topic or qos; 529 when ``MAX_PENDING``
            messages already wait for an unreachable broker.
        """
        qos = self.default_qos if qos is None else qos
        if qos not in (0, 1, 2):
            raise ApiError("QOS must be between 0 and 2", 400)
        validate_topic(topic)
        if len(self._pending) >= MAX_PENDING:
            raise ApiError(f"MQTT Message Queue Full: {len(self._pending)} messages are "
                           f"waiting for the broker {self.address}:{self.port}"
                           f" ({'connected' if self.connected else 'not connected'})", 529)
        pub = _Publish(topic, encode_payload(payload), qos, bool(retain), properties)
        self._pending.append(pub)
        if self.connected and self.client is not None:
            # Written at once from this greenlet, not after a hop to the worker
            # (a wake-up and a select: ~0.2 ms, more under load).  Safe: paho's
            # socket is non-blocking, so the call cannot yield in the middle,
            # and greenlets switch only when they yield.
            self._send_pending()
            if self._pending or self._commands or self._sub_changes or \
                    self.client.want_write():
                self.wake()   # the rest (a full socket buffer) is the worker's
        else:
            self.wake()
        return pub

    def publish_and_wait(self, topic: str, payload: Any = None, qos: int | None = None,
                         retain: bool = False, timeout: float | None = None) -> None:
        """:meth:`publish`, then for QoS 1/2 wait for the broker's
        acknowledgement (``server.mqtt.publish``).

        Raises: as :meth:`publish`; ApiError 504 when ``timeout`` (seconds)
        passes first (the message is still delivered later).
        """
        pub = self.publish(topic, payload, qos, retain)
        if pub.qos > 0 and not pub.done.wait(timeout):
            raise ApiError("MQTT Publish Timed Out", 504)

    def _remote_publish(self, topic: str, payload: Any = None, qos: int | None = None,
                        retain: bool = False, use_prefix: bool = False) -> None:
        """Klippy's ``publish_mqtt_topic`` remote method (configuration.md)."""
        if use_prefix:
            topic = f"{self.instance_name}/{topic.lstrip('/')}"
        try:
            self.publish(topic, payload, qos, retain)
        except ApiError as err:
            log.error("publish_mqtt_topic %s refused: %s", topic, err.message)

    # -- subscribing ---------------------------------------------------------
    def subscribe(self, topic: str, callback: Callable[[str, bytes, Any], Any],
                  qos: int | None = None) -> Callable[[], None]:
        """Call ``callback(topic, payload bytes, properties)`` for each message
        on ``topic`` (a filter; wildcards allowed here), in the worker
        greenlet: it must return quickly.  Returns the function that removes
        this subscription.  Raises ApiError 400 for a bad qos."""
        qos = self.default_qos if qos is None else qos
        if qos not in (0, 1, 2):
            raise ApiError("QOS must be between 0 and 2", 400)
        validate_topic(topic, wildcards=True)
        sub = self._subs.get(topic)
        if sub is None:
            sub = self._subs[topic] = {"qos": qos, "callbacks": []}
            self._sub_changes[topic] = qos
            self.wake()
        sub["callbacks"].append(callback)

        def remove() -> None:
            cur = self._subs.get(topic)
            if cur is None or callback not in cur["callbacks"]:
                return
            cur["callbacks"].remove(callback)
            if not cur["callbacks"]:
                del self._subs[topic]
                self._sub_changes[topic] = None
                self.wake()
        return remove

    def wait_message(self, topic: str, qos: int | None = None,
                     timeout: float | None = None) -> dict[str, Any]:
        """Subscribe to ``topic``, wait for one message (a retained one comes
        at once), unsubscribe (``server.mqtt.subscribe``).

        Returns: ``{"topic", "payload"}`` (payload JSON-decoded when it parses).
        Raises: ApiError 400 for wildcards or a bad qos, 504 on timeout.
        """
        validate_topic(topic)
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()

        def got(_topic: str, payload: bytes, _props: Any) -> None:
            if not result.ready():
                result.set(payload)
        remove = self.subscribe(topic, got, qos)
        try:
            payload = result.get(timeout=timeout)
        except gevent.Timeout:
            raise ApiError("MQTT Subscribe Timed Out", 504) from None
        finally:
            remove()
        return {"topic": topic, "payload": decode_payload(payload)}

    # -- the API over MQTT ---------------------------------------------------
    def _on_api_request(self, _topic: str, payload: bytes, props: Any) -> None:
        reply_topic = self.api_response_topic
        reply_props = None
        if props is not None and getattr(props, "ResponseTopic", None):
            reply_topic = props.ResponseTopic
            reply_props = Properties(PacketTypes.PUBLISH)
            corr = getattr(props, "CorrelationData", None)
            if corr is not None:
                reply_props.CorrelationData = corr
        if self._api_pool.full():
            self._reply(reply_topic, reply_props, error_reply(
                503, "Too many MQTT API requests in progress", _request_id(payload)))
            return
        self._api_pool.spawn(self._serve_request, payload, reply_topic, reply_props)

    def _serve_request(self, payload: bytes, topic: str, props: Any) -> None:
        try:
            obj = jsonutil.loads(payload)
        except ValueError:
            self._reply(topic, props, error_reply(PARSE_ERROR, "Parse error", None))
            return
        dup = self._check_duplicates(obj)
        if dup is not None:
            self._reply(topic, props, dup)
            return
        reply = self.server.jsonrpc.execute(obj, transport=MQTT)
        if reply is not None:
            self._reply(topic, props, reply)

    def _check_duplicates(self, obj: Any) -> dict | None:
        """Strip ``mqtt_timestamp`` from the params of a request; a timestamp
        seen before makes the duplicate error reply (web_api.md tip)."""
        items = obj if isinstance(obj, list) else [obj]
        for item in items:
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(params, dict) or "mqtt_timestamp" not in params:
                continue
            ts = params.pop("mqtt_timestamp")
            key = json.dumps(ts, sort_keys=True)
            if key in self._seen_ts:
                return error_reply(DUPLICATE_ERROR, "Duplicate MQTT Request", item.get("id"))
            self._seen_ts.append(key)
        return None

    def _reply(self, topic: str, props: Any, reply: Any) -> None:
        try:
            self.publish(topic, jsonutil.dumpb(reply), self.api_qos, properties=props)
        except ApiError as err:
            log.error("MQTT API response to %s not queued: %s", topic, err.message)

    # -- Klippy status and state -----------------------------------------------
    def _on_status_update(self, status: dict, eventtime: float) -> None:
        # Only changed fields: a renewed Klippy subscription replays the whole
        # snapshot, which is not a change.
        picked: dict[str, dict[str, Any]] = {}
        for name, fields in self.status_objects.items():
            values = status.get(name)
            if not values:
                continue
            last = self._last_status.setdefault(name, {})
            sel = {f: v for f, v in values.items()
                   if (fields is None or f in fields) and (f not in last or last[f] != v)}
            if sel:
                last.update(sel)
                picked[name] = sel
        if not picked:
            return
        if not self.connected:
            _merge(self._status_backlog, picked)
            return
        if self.status_interval:
            _merge(self._status_batch, picked)
            self._status_batch_time = eventtime
            if self._status_timer is None:
                self._status_timer = gevent.spawn_later(self.status_interval,
                                                        self._flush_status_batch)
            return
        self._publish_status(picked, eventtime)

    def _flush_status_batch(self) -> None:
        self._status_timer = None
        batch, self._status_batch = self._status_batch, {}
        if batch:
            self._publish_status(batch, self._status_batch_time)

    def _publish_status(self, status: dict[str, dict[str, Any]], eventtime: float) -> None:
        try:
            if self.publish_split_status or self.ha_discovery:
                for name, fields in status.items():
                    for field, value in fields.items():
                        if self.ha_discovery:
                            self._announce(name, field)
                        self.publish(f"{self.klipper_state_prefix}/{name}/{field}",
                                     {"eventtime": eventtime, "value": value}, retain=True)
            if not self.publish_split_status:
                self.publish(self.klipper_status_topic,
                             {"eventtime": eventtime, "status": status})
        except ApiError as err:
            log.error("Klippy status not published to MQTT: %s", err.message)

    def _announce(self, name: str | None, field: str) -> None:
        """Publish (once per connection) the retained Home Assistant discovery
        config of one tracked field (``name`` None: the klippy_state topic);
        a sensor whose state is the field's split-status topic and whose
        availability follows ``{instance}/moonraker/status``.
        Raises ApiError 529 when the queue is full."""
        if (name, field) in self._announced:
            return
        self._announced.add((name, field))
        node = _ha_id(self.instance_name)
        if name is None:
            state_topic, template = self.klippy_state_topic, "{{ value_json.klippy_state }}"
            ident, title = "klippy_state", "Klippy state"
        else:
            state_topic = f"{self.klipper_state_prefix}/{name}/{field}"
            template = "{{ value_json.value }}"
            ident, title = _ha_id(f"{name}_{field}"), f"{name} {field}"
        self.publish(f"{self.ha_prefix}/sensor/{node}/{ident}/config", {
            "name": title, "unique_id": f"{node}_{ident}", "state_topic": state_topic,
            "value_template": template,
            "availability": [{"topic": self.status_topic,
                              "value_template": "{{ value_json.server }}",
                              "payload_available": "online",
                              "payload_not_available": "offline"}],
            "device": {"identifiers": [node], "name": self.instance_name,
                       "manufacturer": "Klipper", "model": "moonflask",
                       "sw_version": self.server.version}}, retain=True)

    def _on_klippy_disconnected(self) -> None:
        self._last_status.clear()   # the next Klippy's snapshot is published whole
        self._publish_klippy_state("disconnected")

    def _on_klippy_identified(self) -> None:
        state = self.server.klippy.state
        if state not in ("ready", "shutdown"):   # those two have their own events
            self._publish_klippy_state(state)

    def _klippy_state_payload(self, state: str) -> bytes:
        message = self.server.klippy.state_message if state != "startup" else "Klippy connected"
        return jsonutil.dumpb({"klippy_state": state, "state_message": message,
                               "timestamp": time.time()})

    def _publish_klippy_state(self, state: str) -> None:
        try:
            self.publish(self.klippy_state_topic, self._klippy_state_payload(state),
                         retain=True)
        except ApiError as err:
            log.error("klippy_state not published to MQTT: %s", err.message)

    # -- lifetime ---------------------------------------------------------------
    def run_later(self, cmd: Callable[[], Any]) -> None:
        """Run ``cmd()`` in the worker greenlet (paho calls from elsewhere)."""
        self._commands.append(cmd)
        self.wake()

    def close(self) -> None:
        """Clean stop (server shutdown): publish ``{"server": "offline"}``
        retained and disconnect (no last will); waits up to 2 s."""
        if self._stopping:
            return
        self._stopping = True
        if not self.connected:
            return
        done = gevent.event.Event()
        pub = self.publish(self.status_topic, {"server": "offline"}, self.default_qos,
                           retain=True)

        def disconnect() -> None:
            self.client.disconnect()
            done.set()

        def after_offline() -> None:
            pub.done.wait(1.5)
            self.run_later(disconnect)
        gevent.spawn(after_offline)
        done.wait(2.0)


def _ha_id(text: str) -> str:
    """``text`` as a Home Assistant object id (letters, digits, ``_``)."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "x"


def _merge(into: dict[str, dict[str, Any]], status: dict[str, dict[str, Any]]) -> None:
    for name, fields in status.items():
        into.setdefault(name, {}).update(fields)


def _request_id(payload: bytes) -> Any:
    try:
        obj = jsonutil.loads(payload)
    except ValueError:
        return None
    return obj.get("id") if isinstance(obj, dict) else None


def load_component(server: Any, config: Any) -> MQTTClient:
    """Create the MQTT component from ``[mqtt]``."""
    return MQTTClient(server, config)


