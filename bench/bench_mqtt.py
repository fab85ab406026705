"""Issue 13 benchmark: MQTT, moonflask against the reference Moonraker in one run.

A real mosquitto (tests/mqtt_broker.py), one simulated printer, both servers on
the broker with their own ``instance_name``.  Figures: JSON-RPC ``server.info``
calls/s over MQTT (4 client processes, 8 requests in flight each), and the p99
latency (ms) from sending ``M220 S<n>`` over HTTP to the ``klipper/status``
message carrying the new ``gcode_move.speed_factor`` (Klippy pushes status
every 250 ms, which bounds both servers alike), and from that status's Klippy
``eventtime`` to its arrival (the server's own share).
Run: ``python bench/bench_mqtt.py [--seconds N] [--rounds N]``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time

import requests

from common import REFERENCE_PYTHON, ServerProc, report, sim_printer

import mqtt_broker  # noqa: E402  (tests/ is on the path through common)

CONF = """
[mqtt]
address: 127.0.0.1
port: {port}
username: {user}
password: {password}
instance_name: {instance}
status_objects:
  gcode_move=speed_factor
"""
WINDOW = 8


def _rpc_worker(port: int, instance: str, seconds: float, tag: int,
                out: "multiprocessing.Queue") -> None:
    client = mqtt_broker.Client(port)
    client.subscribe(f"{instance}/moonraker/api/response")
    topic = f"{instance}/moonraker/api/request"
    prefix = f"c{tag}-"
    sent = done = 0

    def send() -> None:
        nonlocal sent
        sent += 1
        client.client.publish(topic, json.dumps({"jsonrpc": "2.0", "method": "server.info",
                                                 "id": f"{prefix}{sent}"}))
    for _ in range(WINDOW):
        send()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _t, raw, _r, _p = client.messages.get(timeout=5)
        except queue.Empty:
            break
        if raw.find(prefix.encode()) < 0:
            continue
        done += 1
        send()
    client.close()
    out.put(done)


def calls_per_second(port: int, instance: str, seconds: float, procs: int = 4) -> float:
    """``server.info`` calls/s over MQTT from ``procs`` client processes."""
    out: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_rpc_worker,
                                       args=(port, instance, seconds, i, out))
               for i in range(procs)]
    for w in workers:
        w.start()
    total = sum(out.get(timeout=seconds + 30) for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def p99(values: list[float]) -> float:
    """The 99th percentile of ``values``."""
    values = sorted(values)
    return values[max(0, int(len(values) * 0.99) - 1)]


def status_latency_p99(srv: ServerProc, port: int, instance: str,
                       rounds: int) -> tuple[float, float]:
    """p99 (ms) of (a) ``M220`` sent over HTTP to the status message showing
    it, (b) Klippy's ``eventtime`` of that status (Klippy's clock is the
    host's CLOCK_MONOTONIC_RAW) to its arrival at the subscriber: the
    server's own share of the delay."""
    client = mqtt_broker.Client(port)
    client.subscribe(f"{instance}/klipper/status")
    session = requests.Session()
    e2e, server = [], []
    for i in range(rounds):
        factor = 50 + (i % 2) * 50 + i % 7   # always a new value
        client.drain()
        sent = time.perf_counter()
        session.post(srv.url + "/printer/gcode/script", json={"script": f"M220 S{factor}"})
        payload, _r, _p = client.wait(f"{instance}/klipper/status", 10, lambda p: abs(
            p["status"].get("gcode_move", {}).get("speed_factor", -1) - factor / 100) < 1e-9)
        now = time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
        e2e.append((time.perf_counter() - sent) * 1000)
        server.append((now - payload["eventtime"]) * 1000)
    client.close()
    return p99(e2e), p99(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="duration of the load run")
    parser.add_argument("--rounds", type=int, default=40, help="status latency rounds")
    args = parser.parse_args()
    if not mqtt_broker.available():
        raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
    if not os.path.exists(REFERENCE_PYTHON):
        raise SystemExit(f"reference Moonraker not installed at {REFERENCE_PYTHON}")
    root = tempfile.mkdtemp(prefix="mfbench-mqtt-")
    broker = mqtt_broker.Broker(os.path.join(root, "broker")).start()
    printer = sim_printer.start(os.path.join(root, "klippy"), os.path.join(root, "gcodes"))
    servers = {}
    try:
        sim_printer.wait_ready(printer.socket_path, 60, printer)
        for kind in ("moonflask", "moonraker"):
            servers[kind] = ServerProc(kind, root, printer.socket_path, CONF.format(
                port=broker.port, user=mqtt_broker.USERNAME, password=mqtt_broker.PASSWORD,
                instance=kind)).start()
        time.sleep(3)
        rpc = tuple(calls_per_second(broker.port, k, args.seconds) for k in servers)
        lat = [status_latency_p99(s, broker.port, k, args.rounds) for k, s in servers.items()]
    finally:
        for srv in servers.values():
            srv.stop()
        sim_printer.stop(printer)
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    report([
        ("JSON-RPC server.info over MQTT, 4x8 in flight (calls/s)", *rpc, True),
        ("klipper/status after M220 over HTTP, p99 (ms)", lat[0][0], lat[1][0], False),
        ("klipper/status from Klippy eventtime to subscriber, p99 (ms)",
         lat[0][1], lat[1][1], False),
    ])


if __name__ == "__main__":
    sys.exit(main())
