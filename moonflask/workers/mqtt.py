"""The MQTT network loop: one greenlet drives the one paho-mqtt client.

``run(component)`` connects to the broker, reconnects forever with backoff
(``BACKOFF_MIN`` doubling to ``BACKOFF_MAX`` seconds, reset after a successful
CONNACK), and while connected waits with ``select`` on the client's socket and
the component's wake-up socket, calling paho's ``loop_read``,
``loop_write`` and ``loop_misc`` (keepalive) and handing paho what other
greenlets queued (:meth:`MQTTClient.flush`; a publish made while connected
is usually written by its own greenlet already, the worker writes what the
socket did not take).  paho's sockets are
non-blocking, so every paho call returns at once; only ``select`` and the
TCP/TLS connect yield to other greenlets.  Each connection gets a fresh
paho client, so messages are (re)sent only from the component's own queue.
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any

import gevent
from gevent import select

import paho.mqtt.client as paho

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5     # seconds
BACKOFF_MAX = 15.0
KEEPALIVE = 60        # seconds (MQTT keepalive)
CONNACK_TIMEOUT = 10  # seconds to wait for the broker's CONNACK
IDLE_WAKE = 1.0       # seconds between loop_misc calls when nothing happens
READ_BATCH = 64       # packets read per readable socket


def run(comp: Any) -> None:
    """Connect, serve, reconnect, forever (supervised worker ``mqtt``).

    Args:
        comp: the :class:`moonflask.components.mqtt.MQTTClient`.
    """
    delay = BACKOFF_MIN
    comp.connection_lost()   # restarted by the supervisor after an error: start clean
    while True:
        comp.client = client = comp.make_client()
        before = comp.connect_count
        try:
            client.connect(comp.address, comp.port, keepalive=KEEPALIVE)
            # small packets (API replies, status) must not wait for Nagle's algorithm
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, ssl.SSLError, ValueError) as err:
            log.info("MQTT connect to %s:%d failed: %s; retrying in %.1f s",
                     comp.address, comp.port, err, delay)
            gevent.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            continue
        _serve(comp, client)
        if comp.connect_count > before:   # the broker accepted this connection
            delay = BACKOFF_MIN
        _close(client)
        comp.connection_lost()
        gevent.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


def _serve(comp: Any, client: paho.Client) -> None:
    """Drive one connection until it ends."""
    began = time.monotonic()
    wake = comp.wake_socket
    while True:
        sock = client.socket()
        if sock is None:
            return
        if not comp.connected and time.monotonic() - began > CONNACK_TIMEOUT:
            log.warning("MQTT broker %s:%d sent no CONNACK", comp.address, comp.port)
            return
        if comp.connected:
            comp.flush()
        pending_tls = isinstance(sock, ssl.SSLSocket) and sock.pending()
        wlist = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select([sock, wake], wlist, [],
                                                  0 if pending_tls else IDLE_WAKE)
        except (OSError, ValueError):
            return
        if wake in readable:
            comp.clear_wake()
        if sock in readable or pending_tls:
            if client.loop_read(READ_BATCH) != paho.MQTT_ERR_SUCCESS:
                return
        if writable and client.socket() is not None:
            if client.loop_write() != paho.MQTT_ERR_SUCCESS:
                return
        if client.socket() is not None and client.loop_misc() != paho.MQTT_ERR_SUCCESS:
            return


def _close(client: paho.Client) -> None:
    sock = client.socket()
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
