"""A/B of one figure in one run: this checkout's ``python -m moonflask``
against a baseline checkout ($MOONFLASK_BENCH_BASELINE, e.g. ``git archive
HEAD~1 | tar -x -C /tmp/base``) and Moonraker, measured in alternating order
for ``ROUNDS`` rounds (the machine is shared: compare medians and pairs).

    MOONFLASK_BENCH_BASELINE=/tmp/base python bench/bench_ab.py rpc|info|p99 [ROUNDS]
"""
from __future__ import annotations

import os
import statistics
import sys

from bench_core import notify_latency_p99, rpc_calls_per_second, wrk_rps
from common import Bench


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else "rpc"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    if not os.environ.get("MOONFLASK_BENCH_BASELINE"):
        raise SystemExit("set MOONFLASK_BENCH_BASELINE to a baseline checkout")
    with Bench() as bench:
        res: dict[str, list[float]] = {k: [] for k in bench.servers}
        for i in range(rounds):
            order = ["moonflask", "baseline"] if i % 2 == 0 else ["baseline", "moonflask"]
            for kind in order + ["moonraker"]:
                srv = bench.servers[kind]
                if what == "rpc":
                    res[kind].append(rpc_calls_per_second(srv, 5))
                elif what == "info":
                    res[kind].append(wrk_rps(srv.url + "/server/info", 5))
                else:
                    res[kind].append(notify_latency_p99(srv, 20))
    for kind, values in res.items():
        print(f"{what} {kind:<10} median {statistics.median(values):9.1f}  "
              f"{[round(v, 1) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
