"""Idle CPU: moonflask vs the reference Moonraker, both running at the same
time against the same simulated printer, each with one websocket client
receiving notify_proc_stat_update every second; CPU % of one core over
IDLE_SECONDS (default 60).  Also the proc_stats sampler's own cost per
sample, measured in-process.

    .venv/bin/python bench/bench_idle_cpu.py   (reference: .reference-venv, or
        MOONFLASK_REFERENCE_PYTHON)
"""
from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import Bench, report  # noqa: E402
from helpers import WsClient  # noqa: E402

IDLE_SECONDS = float(os.environ.get("IDLE_SECONDS", "60"))


def sampler_cost(samples: int = 2000) -> float:
    """CPU microseconds per ProcStats.sample() (the 1 s sampler's work)."""
    from moonflask.components.proc_stats import ProcStats

    class _Events:
        def on(self, *_a):
            pass

    class _Srv:
        events = _Events()
    stats = ProcStats(_Srv())
    stats.sample()
    t0 = time.process_time()
    for _ in range(samples):
        stats.sample()
    return (time.process_time() - t0) / samples * 1e6


def main() -> int:
    per_sample = sampler_cost()
    print(f"proc_stats sampler: {per_sample:.0f} us CPU per sample "
          f"= {per_sample / 1e4:.3f} % of a core at 1 Hz", flush=True)
    with Bench() as bench:
        clients = {k: WsClient(s.ws_url) for k, s in bench.servers.items()}
        for c in clients.values():
            c.wait_notification("notify_proc_stat_update", timeout=5)
        start = {k: (s.cpu_seconds(), time.monotonic()) for k, s in bench.servers.items()}
        time.sleep(IDLE_SECONDS)
        pct = {}
        for k, s in bench.servers.items():
            cpu0, t0 = start[k]
            pct[k] = (s.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
        got = {k: c.notifications.qsize() for k, c in clients.items()}
        for c in clients.values():
            c.close()
    print(f"notify_proc_stat_update received in {IDLE_SECONDS:.0f} s: "
          f"moonflask {got['moonflask']}, moonraker {got['moonraker']}")
    print(f"idle CPU %: moonflask {pct['moonflask']:.3f}, moonraker {pct['moonraker']:.3f}")
    report([(f"idle CPU % of one core over {IDLE_SECONDS:.0f} s (1 ws client)",
             pct["moonflask"], pct["moonraker"], False)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
