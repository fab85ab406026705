"""Issue 2 benchmark: moonflask against the reference Moonraker, same printer, same run.

Figures: requests/s of ``GET /server/info`` and ``GET /printer/objects/query?toolhead``
under 32 concurrent connections (wrk), JSON-RPC calls/s over 8 websockets,
p50 and p99 latency of a ``notify_gcode_response`` delivered to 100 websocket
clients, the latency of ``server.files.metadata`` for a file already scanned,
and idle RSS.  Run: ``make bench`` or ``python bench/bench_core.py [--seconds N]``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import time
import uuid

import requests
import websocket

from common import Bench, ServerProc, measure_both, report


def wrk_rps(url: str, seconds: int, connections: int = 32) -> float:
    """Requests/s measured by wrk (2 threads, ``connections`` connections)."""
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} error responses")
    return float(match.group(1))


_RPC_PAYLOAD = b'{"jsonrpc":"2.0","method":"server.info","id":1}'
_MASK = b"\x5a\x13\xc7\x2e"
# the request as a masked client text frame (RFC 6455 5.3), built once: the
# client then costs a send and a frame read per call, so that the figure is
# the server's, not the Python client's (json + websocket-client per call)
_RPC_FRAME = (bytes([0x81, 0x80 | len(_RPC_PAYLOAD)]) + _MASK
              + bytes(b ^ _MASK[i % 4] for i, b in enumerate(_RPC_PAYLOAD)))


def _read_payload(sock, buf: bytearray) -> bytes:
    """The payload of the next frame from ``sock`` (server frames are not
    masked); ``buf`` keeps what was read past it."""
    while True:
        if len(buf) >= 2:
            n, head = buf[1] & 0x7F, 2
            if n == 126 and len(buf) >= 4:
                n, head = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127 and len(buf) >= 10:
                n, head = int.from_bytes(buf[2:10], "big"), 10
            if n < 126 or head > 2:
                if len(buf) >= head + n:
                    payload = bytes(buf[head:head + n])
                    del buf[:head + n]
                    return payload
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the websocket")
        buf += data


def _rpc_worker(ws_url: str, start_at: float, seconds: float,
                out: "multiprocessing.Queue") -> None:
    ws = websocket.create_connection(ws_url, skip_utf8_validation=True)
    sock, buf, count = ws.sock, bytearray(), 0
    time.sleep(max(0.0, start_at - time.time()))
    deadline = start_at + seconds
    while time.time() < deadline:
        sock.sendall(_RPC_FRAME)
        while b'"result"' not in _read_payload(sock, buf):   # skip notifications
            pass
        count += 1
    ws.close()
    out.put(count)


def _rpc_round(srv: ServerProc, seconds: float, sockets: int) -> float:
    out: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 1.0          # every client connected, then all at once
    procs = [multiprocessing.Process(target=_rpc_worker,
                                     args=(srv.ws_url, start_at, seconds, out))
             for _ in range(sockets)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 30) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


_rpc_rates: dict[str, list[float]] = {}


def rpc_calls_per_second(bench: Bench, srv: ServerProc, seconds: float,
                         sockets: int = 8, rounds: int = 4) -> float:
    """``server.info`` calls/s over ``sockets`` websockets (one client
    process each, one call at a time per socket): the median of ``rounds``
    rounds of ``seconds / rounds`` seconds, the servers taking turns (A B B
    A ...) so that a change in the machine's load falls on each alike."""
    if not _rpc_rates:
        kinds = list(bench.servers)
        for kind in kinds:
            _rpc_rates[kind] = []
        for i in range(rounds):
            for kind in (kinds if i % 2 == 0 else kinds[::-1]):
                _rpc_rates[kind].append(_rpc_round(bench.servers[kind], seconds / rounds,
                                                   sockets))
    return statistics.median(_rpc_rates[srv.kind])


_notify_cache: dict[int, tuple[float, float]] = {}


def notify_latency(srv: ServerProc, rounds: int, clients: int = 100) -> tuple[float, float]:
    """``(p50, p99)`` (ms) from sending ``M118 token`` over HTTP to its
    notify_gcode_response arriving at each of ``clients`` websockets
    (measured once per server, both figures from the same rounds)."""
    if id(srv) in _notify_cache:
        return _notify_cache[id(srv)]
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(clients):
        ws = websocket.create_connection(srv.ws_url, skip_utf8_validation=True)
        conns.append(ws)
        sel.register(ws.sock, selectors.EVENT_READ, ws)
    session = requests.Session()
    latencies: list[float] = []
    for _ in range(rounds):
        token = uuid.uuid4().hex
        waiting = set(range(clients))
        index = {id(ws): i for i, ws in enumerate(conns)}
        sent = time.perf_counter()
        session.post(srv.url + "/printer/gcode/script", json={"script": f"M118 {token}"})
        deadline = time.monotonic() + 10
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                ws = key.data
                text = ws.recv()
                if token in text:
                    latencies.append((time.perf_counter() - sent) * 1000)
                    waiting.discard(index[id(ws)])
        if waiting:
            raise RuntimeError(f"{len(waiting)} clients missed a notification")
    for ws in conns:
        ws.close()
    latencies.sort()
    out = (statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1])
    _notify_cache[id(srv)] = out
    return out


GCODE_SAMPLE = os.path.join(os.environ.get("MOONFLASK_SHARED", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")), "gcode")


class MetadataProbe:
    """JSON-RPC ``server.files.metadata`` for a file whose metadata is
    already extracted (uploaded, then asked until its slicer is known), over
    one websocket, one call at a time."""

    NAME = "prusaslicer_cone_0.15mm_labels.gcode"   # thumbnails, objects: a full record

    def __init__(self, srv: ServerProc) -> None:
        with open(os.path.join(GCODE_SAMPLE, self.NAME), "rb") as fh:
            r = requests.post(srv.url + "/server/files/upload", files={"file": (self.NAME, fh)})
        r.raise_for_status()
        self.ws = websocket.create_connection(srv.ws_url, skip_utf8_validation=True)
        self.next_id = 0
        deadline = time.monotonic() + 60
        while "slicer" not in self.call():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{srv.kind}: no metadata for {self.NAME}")
            time.sleep(0.2)

    def call(self) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"jsonrpc": "2.0", "method": "server.files.metadata",
                                 "params": {"filename": self.NAME}, "id": self.next_id}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                return msg.get("result") or {}

    def round(self, calls: int = 50) -> list[float]:
        """The latencies (ms) of ``calls`` calls."""
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self.call()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def close(self) -> None:
        self.ws.close()


_metadata_samples: dict[str, list[float]] = {}


def metadata_latency(bench: Bench, srv: ServerProc, rounds: int = 16) -> float:
    """Median latency (ms) of :class:`MetadataProbe` calls on ``srv``.  The
    servers are measured in alternating rounds (A B B A ...), so that a
    change in the machine's load during the run falls on each alike: the
    figure is a fraction of a millisecond."""
    if not _metadata_samples:
        probes = {kind: MetadataProbe(s) for kind, s in bench.servers.items()}
        for kind in probes:
            _metadata_samples[kind] = []
        for i in range(rounds):
            for kind in (list(probes) if i % 2 == 0 else list(reversed(probes))):
                _metadata_samples[kind] += probes[kind].round()
        for probe in probes.values():
            probe.close()
    return statistics.median(_metadata_samples[srv.kind])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="duration of each load run")
    parser.add_argument("--rounds", type=int, default=30, help="notification rounds")
    parser.add_argument("--gunicorn", action="store_true",
                        help="also measure the gunicorn entry (gunicorn -c gunicorn.conf.py)")
    parser.add_argument("--only", default="", help="comma list of figures: rss,info,query,rpc,p50,p99,meta")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    figures = {
        "info": ("GET /server/info, 32 connections (req/s)", True, 1.5,
                 lambda s: wrk_rps(s.url + "/server/info", args.seconds)),
        # bound by Klippy's own answer rate (both servers wait on it): context only
        "query": ("GET /printer/objects/query?toolhead, 32 conn (req/s)", True, None,
                  lambda s: wrk_rps(s.url + "/printer/objects/query?toolhead", args.seconds)),
        "rpc": ("JSON-RPC server.info over 8 websockets (calls/s)", True, 1.5,
                lambda s: rpc_calls_per_second(bench, s, 2 * args.seconds)),
        "p50": ("notify_gcode_response to 100 websockets, p50 (ms)", False, 1.0,
                lambda s: notify_latency(s, args.rounds)[0]),
        "p99": ("notify_gcode_response to 100 websockets, p99 (ms)", False, 1.0,
                lambda s: notify_latency(s, args.rounds)[1]),
        "meta": ("server.files.metadata of a cached file (ms)", False, 1.0,
                 lambda s: metadata_latency(bench, s)),
        "rss": ("idle RSS (MiB)", False, 0.8, lambda s: s.rss_kib() / 1024),
    }
    order = ["rss", "info", "query", "rpc", "p50", "p99", "meta"]
    wanted = [k for k in order if not args.only or k in args.only.split(",")]
    rows, guni_rows, base_rows = [], [], []
    with Bench(gunicorn=args.gunicorn) as bench:
        for key in wanted:
            name, higher, target, fn = figures[key]
            ours, ref = measure_both(bench, fn)
            rows.append((name, ours, ref, higher, target))
            if args.gunicorn:
                guni_rows.append((name, fn(bench.servers["gunicorn"]), ref, higher, target))
            if "baseline" in bench.servers:
                base_rows.append((name, fn(bench.servers["baseline"]), ref, higher, target))
    order_out = ["info", "query", "rpc", "p50", "p99", "meta", "rss"]
    rows.sort(key=lambda r: order_out.index(next(k for k in figures if figures[k][0] == r[0])))
    report(rows)
    if guni_rows:
        print("gunicorn entry (gunicorn -c gunicorn.conf.py wsgi:app) against Moonraker:")
        report(guni_rows)
    if base_rows:
        print("baseline ($MOONFLASK_BENCH_BASELINE, python -m moonflask) against Moonraker:")
        report(base_rows)


if __name__ == "__main__":
    sys.exit(main())
