"""The temperature sampler: one sample of every tracked sensor a second
into the temperature store (server.md "Request Cached Temperature Data")."""
from __future__ import annotations

import time
from typing import Any

import gevent

SAMPLE_PERIOD = 1.0   # seconds


def run(data_store: Any) -> None:
    """Call ``data_store.sample()`` (a :class:`moonflask.components.data_store.DataStore`)
    every ``SAMPLE_PERIOD`` seconds on a fixed grid.  Never returns."""
    next_at = time.monotonic()
    while True:
        next_at += SAMPLE_PERIOD
        gevent.sleep(max(0.0, next_at - time.monotonic()))
        data_store.sample()
