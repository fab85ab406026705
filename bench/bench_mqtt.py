"""Issue 13 benchmark: MQTT, moonflask against the reference Moonraker in one run.

A real mosquitto (tests/mqtt_broker.py), one simulated printer, both servers on
the broker with their own ``instance_name``.  Figures: JSON-RPC ``server.info``
calls/s over MQTT (4 client processes, 8 requests in flight each), and the
status-publish latency, both servers measured on the SAME Klippy changes
(``M220 S<n>`` sent to Klippy directly; one subscriber on both servers'
``klipper/status``): p99 from sending the G-code to the message carrying the new
``gcode_move.speed_factor`` (Klippy pushes status every 250 ms, which bounds
both servers alike), p50/p99 from that status's Klippy ``eventtime`` to its
arrival at the subscriber.  The breakdown line gives the shares that are no
server's: Klippy eventtime to a direct client of Klippy's socket, and an MQTT
publish to a subscriber through the broker with no server in between.
Run: ``python bench/bench_mqtt.py [--seconds N] [--rounds N] [--dump FILE]``.
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
import threading
import time

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


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(len(values) * q)) - 1))]


def p99(values: list[float]) -> float:
    """The 99th percentile of ``values``."""
    return pct(values, 0.99)


def _now() -> float:
    # Klippy's eventtime is the host's CLOCK_MONOTONIC_RAW
    return time.clock_gettime(time.CLOCK_MONOTONIC_RAW)


class KlippyWatcher:
    """A direct client of Klippy's socket subscribed to
    ``gcode_move.speed_factor``, in its own thread: records when each status
    push arrives (the share of the delay that is Klippy's and the kernel's,
    the same for any client)."""

    def __init__(self, socket_path: str) -> None:
        self.conn = sim_printer.KlippyConnection(socket_path, timeout=10)
        self.conn.request("objects/subscribe", {"objects": {"gcode_move": ["speed_factor"]},
                                                "response_template": {"method": "status"}})
        self.arrivals: "queue.Queue[tuple[float, float, float]]" = queue.Queue()
        self.conn.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                now = _now()
                params = msg.get("params") or {}
                factor = params.get("status", {}).get("gcode_move", {}).get("speed_factor")
                if factor is not None:
                    self.arrivals.put((params["eventtime"], factor, now))
        except (OSError, ValueError, ConnectionError):
            return

    def close(self) -> None:
        self.conn.close()


def broker_loopback(port: int, rounds: int) -> list[float]:
    """ms from a client's publish to its arrival at another subscribed
    client (the broker's and the clients' share, with no server in between)."""
    sub = mqtt_broker.Client(port)
    sub.subscribe("bench/loopback")
    pub = mqtt_broker.Client(port)
    out = []
    for i in range(rounds):
        sub.drain()
        sent = _now()
        pub.client.publish("bench/loopback", json.dumps({"eventtime": sent, "i": i}))
        payload, _r, _p = sub.wait("bench/loopback", 10, lambda p: p.get("i") == i)
        out.append((_now() - sent) * 1000)
        time.sleep(0.02)
    sub.close()
    pub.close()
    return out


def status_latency(kinds: list[str], port: int, socket_path: str,
                   rounds: int) -> dict[str, dict[str, list[float]]]:
    """Every server measured on the SAME Klippy changes: ``M220 S<n>`` sent
    to Klippy directly; for each server, ms from sending to the
    ``klipper/status`` message carrying the new speed factor (``e2e``) and
    from that status's Klippy ``eventtime`` to its arrival (``server``);
    ``klippy``: eventtime to a direct Klippy client."""
    client = mqtt_broker.Client(port)
    for kind in kinds:
        client.subscribe(f"{kind}/klipper/status")
    watcher = KlippyWatcher(socket_path)
    gcode = sim_printer.KlippyConnection(socket_path, timeout=10)
    out: dict[str, dict[str, list[float]]] = {k: {"e2e": [], "server": []} for k in kinds}
    out["klippy"] = {"server": []}
    try:
        for i in range(rounds):
            factor = 50 + (i % 2) * 50 + i % 7   # always a new value
            want = factor / 100
            client.drain()
            sent = _now()
            gcode.request("gcode/script", {"script": f"M220 S{factor}"})
            pending = set(kinds)
            deadline = time.monotonic() + 10
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no status from {pending}")
                try:
                    topic, raw, _r, _p = client.messages.get(timeout=left)
                except queue.Empty:
                    continue
                now = _now()
                kind = topic.split("/", 1)[0]
                payload = mqtt_broker.decode(raw)
                got = payload["status"].get("gcode_move", {}).get("speed_factor")
                if kind in pending and got is not None and abs(got - want) < 1e-9:
                    pending.discard(kind)
                    out[kind]["e2e"].append((now - sent) * 1000)
                    out[kind]["server"].append((now - payload["eventtime"]) * 1000)
            while True:
                ev, got, now = watcher.arrivals.get(timeout=10)
                if abs(got - want) < 1e-9:
                    out["klippy"]["server"].append((now - ev) * 1000)
                    break
    finally:
        gcode.close()
        watcher.close()
        client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="duration of the load run")
    parser.add_argument("--rounds", type=int, default=200, help="status latency rounds")
    parser.add_argument("--dump", help="write every latency sample (ms) to this JSON file")
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
        lat = status_latency(list(servers), broker.port, printer.socket_path, args.rounds)
        loop = broker_loopback(broker.port, args.rounds)
    finally:
        for srv in servers.values():
            srv.stop()
        sim_printer.stop(printer)
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    mf, mr = lat["moonflask"], lat["moonraker"]
    report([
        # issue 13's targets: >= 1.5x the calls/s, <= 0.5x the status p99
        ("JSON-RPC server.info over MQTT, 4x8 in flight (calls/s)", *rpc, True, 1.5),
        # Klippy's 250 ms status tick included: context
        ("klipper/status after M220 sent to Klippy, p99 (ms)", p99(mf["e2e"]),
         p99(mr["e2e"]), False, None),
        ("klipper/status Klippy eventtime->subscriber, p50 (ms)", pct(mf["server"], 0.5),
         pct(mr["server"], 0.5), False, None),
        ("klipper/status Klippy eventtime->subscriber, p99 (ms)", p99(mf["server"]),
         p99(mr["server"]), False, 0.5),
    ])
    # the shares that are no server's: the same for both
    kl = lat["klippy"]["server"]
    print(f"breakdown (ms, p50 / p99): Klippy eventtime -> direct Klippy client "
          f"{pct(kl, 0.5):.2f} / {p99(kl):.2f}; MQTT publish -> subscriber through the "
          f"broker, no server {pct(loop, 0.5):.2f} / {p99(loop):.2f}; "
          f"{args.rounds} rounds; loadavg {open('/proc/loadavg').read().strip()}")
    if args.dump:
        with open(args.dump, "w") as fh:
            json.dump({"latency": lat, "loopback": loop}, fh)

if __name__ == "__main__":
    sys.exit(main())
