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

TICK = 0.25      # seconds, the shortest wait between two checks
MAX_WAIT = 1.0   # seconds, the longest (a device that just failed is due in 5 s)


def _refresh(dev: Any) -> None:
    try:
        dev.refresh()
    except Exception:   # a bug in one device must not stop the others
        log.exception("power device %s: refresh failed", dev.name)


def run(power: Any) -> None:
    """Never returns: refresh every due device of ``power`` (the
    :class:`moonflask.components.power.Power` component), then wait until
    the next one is due (between TICK and MAX_WAIT)."""
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
        upcoming = [d.next_poll for d in power.devices.values() if d.name not in busy]
        wait = min(upcoming, default=now + MAX_WAIT) - time.monotonic()
        gevent.sleep(min(max(wait, TICK), MAX_WAIT))
