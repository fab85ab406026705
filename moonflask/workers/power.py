"""The power poll loop: initialises devices that were not reachable, polls
those with ``poll_interval`` (so a plug switched by hand shows its new
state) and retries those in ``error``.  Spec: configuration.md "External
Power Events".

Each due device is refreshed in its own greenlet, so a slow or dead device
(bounded by its request timeout) never delays the others.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import gevent

log = logging.getLogger(__name__)

TICK = 0.25   # seconds between checks for due devices


def _refresh(dev: Any) -> None:
    try:
        dev.refresh()
    except Exception:   # a bug in one device must not stop the others
        log.exception("power device %s: refresh failed", dev.name)


def run(power: Any) -> None:
    """Never returns: refresh every due device of ``power`` (the
    :class:`moonflask.components.power.Power` component), then wait a tick."""
    busy: dict[str, gevent.Greenlet] = {}
    while True:
        now = time.monotonic()
        for dev in list(power.devices.values()):
            running = busy.get(dev.name)
            if running is not None and not running.dead:
                continue
            if dev.due(now):
                busy[dev.name] = gevent.spawn(_refresh, dev)
        for name, glet in list(busy.items()):
            if glet.dead:
                del busy[name]
        gevent.sleep(TICK)
