"""Spoolman workers: the websocket to Spoolman and the usage reporter.

``run`` keeps a websocket (simple-websocket's ``Client``) to Spoolman's
``/api/v1/spool`` open: connected means this socket is up
(``spoolman_connected``).  A failed or lost connection is retried with
backoff (``RECONNECT_MIN`` doubling up to ``RECONNECT_MAX`` seconds, reset
after a connection succeeds).  Messages are spool events
(``{"type": "added"|"updated"|"deleted", "resource": "spool", "payload"}``)
handed to :meth:`moonflask.components.spoolman.Spoolman.on_spool_event`.

``run_sync`` is the only greenlet that writes to Spoolman's REST API: every
``sync_rate`` seconds, or at once when woken (a job ended, a connection came
up), it runs :meth:`Spoolman.sync`.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import gevent
from simple_websocket import Client, ConnectionClosed

log = logging.getLogger(__name__)

RECONNECT_MIN = 1.0     # seconds before the first reconnect attempt
RECONNECT_MAX = 10.0    # seconds, the longest wait between attempts
PING_INTERVAL = 20.0    # seconds; a Spoolman that stops answering pings is dropped
RECEIVE_TIMEOUT = 30.0  # seconds of silence before the loop re-checks the socket


def run(spoolman: Any) -> None:
    """Hold the websocket to Spoolman forever (never returns).

    Args:
        spoolman: the :class:`moonflask.components.spoolman.Spoolman`.
    """
    delay = RECONNECT_MIN
    while True:
        try:
            ws = Client.connect(spoolman.ws_url, ping_interval=PING_INTERVAL)
        except (OSError, ConnectionError, ConnectionClosed) as err:
            log.debug("Spoolman websocket connect failed: %s", err)
            spoolman.set_connected(False)
            gevent.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            continue
        delay = RECONNECT_MIN
        spoolman.set_connected(True)
        try:
            _read(spoolman, ws)
        finally:
            spoolman.set_connected(False)
            try:
                ws.close()
            except Exception:  # already closed
                pass
        gevent.sleep(RECONNECT_MIN)


def _read(spoolman: Any, ws: Any) -> None:
    while True:
        try:
            text = ws.receive(timeout=RECEIVE_TIMEOUT)
        except ConnectionClosed as err:
            log.info("Spoolman websocket closed: %s", err)
            return
        if text is None:
            if not ws.connected:
                return
            continue
        try:
            event = json.loads(text)
        except ValueError:
            log.warning("Spoolman sent an undecodable message: %r", text[:200])
            continue
        if isinstance(event, dict):
            spoolman.on_spool_event(event)


def run_sync(spoolman: Any) -> None:
    """Report usage forever (never returns): :meth:`Spoolman.sync` every
    ``sync_rate`` seconds or when ``spoolman.wake`` is set."""
    while True:
        spoolman.wake.wait(spoolman.sync_rate)
        spoolman.wake.clear()
        spoolman.sync()
