"""The proc-stats sampler: one sample a second, published as
``notify_proc_stat_update`` (web_api.md "Get Moonraker Process Stats")."""
from __future__ import annotations

import time
from typing import Any

import gevent

SAMPLE_INTERVAL = 1.0       # seconds


def run(proc_stats: Any) -> None:
    """Sample ``proc_stats`` (a :class:`moonflask.components.proc_stats.ProcStats`)
    every ``SAMPLE_INTERVAL`` seconds, on a fixed grid that resyncs after a
    suspend.  Never returns."""
    proc_stats.sample()   # primes the deltas
    next_at = time.monotonic() + SAMPLE_INTERVAL
    while True:
        gevent.sleep(max(0.0, next_at - time.monotonic()))
        next_at += SAMPLE_INTERVAL
        if next_at < time.monotonic():   # fell behind (suspend): resync
            next_at = time.monotonic() + SAMPLE_INTERVAL
        proc_stats.publish()
