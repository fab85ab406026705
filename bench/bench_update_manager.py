#!/usr/bin/env python3
"""Issue 12 benchmark: the update manager's refresh of 10 git repos,
moonflask against the reference Moonraker in the same run.

Made here: 10 bare "origin" repositories with tagged releases (v0.1.0,
v0.2.0 and one later commit), and for each server its own 10 clones kept at
v0.1.0, configured as ``[update_manager extN] type: git_repo`` (channel dev,
``is_system_service: False``; ``[machine] provider: none``, no system
updates, as scripts/capture_update_manager.py).  Before each round a new
commit is pushed to every origin, so that each refresh has something to
fetch.  Figures per server:

- the wall time of ``POST /machine/update/refresh`` (all updaters), the
  median of ``--rounds`` rounds;
- the latency of ``GET /machine/update/status`` (median and max) polled
  back to back while those refreshes run.

Targets: moonflask's refresh at least 2x faster than Moonraker's, and
``status`` within 50 ms (max) during a refresh.  The explicit refresh is
not subject to the 60 s limit of the deprecated ``status?refresh=true``
(neither server limits it: checked on each round's answer).

    .venv/bin/python bench/bench_update_manager.py [--repos 10] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import requests

from common import Bench, ServerProc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from um_helpers import Origin, ext_section, git, um_config  # noqa: E402

REFRESH_TARGET = 2.0    # Moonraker's refresh time / moonflask's, at least
STATUS_TARGET_MS = 50.0  # status latency during a refresh, at most


def make_repos(base: str, count: int) -> tuple[list[Origin], dict[str, str]]:
    """``count`` origins with releases, and per server ``count`` clones at
    v0.1.0; returns the origins and ``{kind: config text}``."""
    origins = []
    sections: dict[str, list[str]] = {"moonflask": [], "moonraker": []}
    for i in range(count):
        origin = Origin(os.path.join(base, f"ext{i}"))
        origin.commit(tag="v0.1.0")
        origin.commit(tag="v0.2.0")
        origin.commit()
        origins.append(origin)
        for kind, secs in sections.items():
            clone = origin.clone(os.path.join(base, kind, f"ext{i}"), at="v0.1.0")
            secs.append(ext_section(f"ext{i}", clone, origin.url,
                                    "primary_branch: master\nchannel: dev\n"))
    return origins, {kind: um_config(*secs) for kind, secs in sections.items()}


def wait_ready(srv: ServerProc, names: list[str], timeout: float = 120.0) -> None:
    """Wait until the update manager answers a refresh (its start-up
    refresh done) and lists every ``names`` entry."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = requests.post(srv.url + "/machine/update/refresh",
                                 json={"name": names[0]}, timeout=30)
            last = resp.text[:200]
            if resp.status_code == 200:
                info = resp.json()["result"]["version_info"]
                if all(n in info for n in names):
                    return
        except requests.RequestException as err:
            last = str(err)
        time.sleep(0.5)
    raise TimeoutError(f"{srv.kind}: update manager not ready: {last}")


def refresh_round(srv: ServerProc, names: list[str],
                  latencies: list[float]) -> float:
    """One ``POST /machine/update/refresh`` of all updaters, timed (s), with
    ``GET /machine/update/status`` polled meanwhile (ms into ``latencies``).
    Checks that every repo saw the newest origin commit."""
    result: dict = {}

    def do_refresh() -> None:
        t0 = time.perf_counter()
        resp = requests.post(srv.url + "/machine/update/refresh", timeout=120)
        result["seconds"] = time.perf_counter() - t0
        result["resp"] = resp

    session = requests.Session()
    session.get(srv.url + "/machine/update/status", timeout=10)  # connection warm
    worker = threading.Thread(target=do_refresh)
    worker.start()
    time.sleep(0.02)  # let the refresh request reach the server first
    while worker.is_alive():
        t0 = time.perf_counter()
        resp = session.get(srv.url + "/machine/update/status", timeout=30)
        ms = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"{srv.kind}: status answered {resp.status_code}")
        if worker.is_alive():  # only answers given while the refresh ran
            latencies.append(ms)
        time.sleep(0.005)
    worker.join()
    resp = result["resp"]
    if resp.status_code != 200:
        raise RuntimeError(f"{srv.kind}: refresh answered {resp.status_code}: {resp.text[:300]}")
    return result["seconds"]


def check_behind(srv: ServerProc, names: list[str], origins: list[Origin]) -> None:
    """Every repo's remote_hash is its origin's newest commit (the refresh
    really fetched)."""
    info = requests.get(srv.url + "/machine/update/status", timeout=30).json()
    info = info["result"]["version_info"]
    for name, origin in zip(names, origins):
        want = git(origin.work, "rev-parse", "HEAD").strip()
        got = info[name].get("remote_hash")
        if got != want:
            raise RuntimeError(f"{srv.kind}: {name} remote_hash {got}, origin at {want}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", type=int, default=10, help="git_repo updaters")
    parser.add_argument("--rounds", type=int, default=5, help="refreshes per server")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="mfbench-um-")
    try:
        origins, configs = make_repos(base, args.repos)
        names = [f"ext{i}" for i in range(args.repos)]
        times: dict[str, list[float]] = {"moonflask": [], "moonraker": []}
        lat: dict[str, list[float]] = {"moonflask": [], "moonraker": []}
        with Bench(configs) as bench:
            for srv in bench.servers.values():
                wait_ready(srv, names)
            for _ in range(args.rounds):
                for origin in origins:
                    origin.commit()
                # alternate the order so that neither always goes first
                kinds = ["moonflask", "moonraker"]
                if len(times["moonflask"]) % 2:
                    kinds.reverse()
                for kind in kinds:
                    srv = bench.servers[kind]
                    times[kind].append(refresh_round(srv, names, lat[kind]))
                    check_behind(srv, names, origins)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    ours, ref = (statistics.median(times[k]) * 1000 for k in ("moonflask", "moonraker"))
    speedup = ref / ours if ours else float("inf")
    st = {k: (statistics.median(v) if v else float("nan"), max(v) if v else float("nan"),
              len(v)) for k, v in lat.items()}
    print(f"{args.repos} git_repo updaters, {args.rounds} rounds; refresh times (ms): "
          + "; ".join(f"{k} " + ", ".join(f"{t * 1000:.0f}" for t in v)
                      for k, v in times.items()))
    print(f"{'figure':<52}{'moonflask':>12}{'moonraker':>12}{'ratio':>8}  target")
    print(f"{'POST /machine/update/refresh, all, median (ms)':<52}{ours:>12.1f}{ref:>12.1f}"
          f"{ref / ours if ours else float('inf'):>7.2f}x  "
          f"{'met' if speedup >= REFRESH_TARGET else 'MISSED'} "
          f"(moonflask >= {REFRESH_TARGET:.0f}x faster)")
    for label, idx in (("median", 0), ("max", 1)):
        a, b = st["moonflask"][idx], st["moonraker"][idx]
        name = f"GET /machine/update/status in refresh, {label} (ms)"
        target = ""
        if idx == 1:
            target = (f"{'met' if a <= STATUS_TARGET_MS else 'MISSED'} "
                      f"(moonflask <= {STATUS_TARGET_MS:.0f} ms)")
        print(f"{name:<52}{a:>12.1f}{b:>12.1f}{a / b if b else float('inf'):>8.2f}  {target}")
    print(f"{'status samples during refreshes':<52}{st['moonflask'][2]:>12d}"
          f"{st['moonraker'][2]:>12d}")


if __name__ == "__main__":
    sys.exit(main())
