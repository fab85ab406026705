#!/usr/bin/env python3
"""Database throughput over a websocket: moonflask vs the reference Moonraker
in the same run.

For each server (no Klippy needed): N ``server.database.post_item`` then N
``server.database.get_item`` over one websocket, first one request at a time
(latency-bound), then pipelined with WINDOW requests in flight.

    .venv/bin/python bench/bench_database.py [-n 2000] [--window 32]
        [--reference-python .reference-venv/bin/python]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import requests
import websocket

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, python: str, data: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    for sub in ("config", "logs", "gcodes", "database", "comms"):
        os.makedirs(os.path.join(data, sub), exist_ok=True)
    conf = os.path.join(data, "config", "moonraker.conf")
    with open(conf, "w") as fh:
        fh.write(f"[server]\nhost: 127.0.0.1\nport: {port}\n"
                 f"klippy_uds_address: {data}/comms/klippy.sock\n"
                 # Moonraker 0.11 refuses every client without trusted_clients
                 "[authorization]\ntrusted_clients:\n  127.0.0.0/8\n")
    mod = "moonflask" if kind == "moonflask" else "moonraker"
    args = [python, "-m", mod, "-d", data, "-c", conf, "-l", os.path.join(data, "logs", "m.log")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/server/info", timeout=1)
            return proc, port
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{kind} did not start")


def run(ws, method: str, make_params, n: int, window: int) -> float:
    """Requests per second for n calls with ``window`` in flight."""
    sent = done = 0
    t0 = time.perf_counter()
    while done < n:
        while sent < n and sent - done < window:
            ws.send(json.dumps({"jsonrpc": "2.0", "method": method,
                                "params": make_params(sent), "id": sent + 1}))
            sent += 1
        msg = json.loads(ws.recv())
        if "id" in msg:
            if "error" in msg:
                raise RuntimeError(msg["error"])
            done += 1
    return n / (time.perf_counter() - t0)


def bench(kind: str, python: str, n: int, window: int) -> dict[str, float]:
    data = tempfile.mkdtemp(prefix=f"bench-db-{kind}-")
    proc, port = start(kind, python, data)
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/websocket", timeout=30)
        value = {"theme": "dark", "layout": [1, 2, 3], "nested": {"a": {"b": "c" * 64}}}
        post = lambda i: {"namespace": "bench", "key": f"client.k{i % 500}",  # noqa: E731
                          "value": value}
        get = lambda i: {"namespace": "bench", "key": f"client.k{i % 500}"}  # noqa: E731
        out = {}
        run(ws, "server.database.post_item", post, 200, 1)          # warm up
        out["post_item seq"] = run(ws, "server.database.post_item", post, n, 1)
        out["get_item seq"] = run(ws, "server.database.get_item", get, n, 1)
        out[f"post_item x{window}"] = run(ws, "server.database.post_item", post, n, window)
        out[f"get_item x{window}"] = run(ws, "server.database.get_item", get, n, window)
        ws.close()
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--python", default=sys.executable, help="python running moonflask")
    p.add_argument("--reference-python", default=os.environ.get(
        "MOONFLASK_REFERENCE_PYTHON", os.path.join(REPO, ".reference-venv", "bin", "python")))
    args = p.parse_args(argv)
    results = {"moonflask": bench("moonflask", args.python, args.n, args.window),
               "moonraker": bench("moonraker", args.reference_python, args.n, args.window)}
    print(f"{'requests/s':24} {'moonflask':>10} {'moonraker':>10} {'ratio':>6}")
    for key in results["moonflask"]:
        a, b = results["moonflask"][key], results["moonraker"][key]
        print(f"{key:24} {a:10.0f} {b:10.0f} {a / b:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
