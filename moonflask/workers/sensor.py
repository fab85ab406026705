"""The sensor sampler: once a second, every sensor's latest values are
appended to its measurement store (``server.sensors.measurements``), as the
temperature store samples Klippy's heaters.  Spec: web_api.md "Sensor APIs"."""
from __future__ import annotations

import time
from typing import Any

import gevent

SAMPLE_PERIOD = 1.0   # seconds


def run(sensors: Any) -> None:
    """Sample forever (supervised worker ``sensor``).

    Args:
        sensors: the :class:`moonflask.components.sensor.Sensors` component.
    """
    next_at = time.monotonic()
    while True:
        next_at += SAMPLE_PERIOD
        delay = next_at - time.monotonic()
        if delay < 0:   # the hub was busy: skip the missed samples
            next_at = time.monotonic()
            delay = 0.0
        gevent.sleep(delay)
        sensors.sample_all()
