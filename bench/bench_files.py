"""Issue 3 benchmark: the file manager, moonflask against the reference
Moonraker in the same run, same simulated printer.

Figures:
- upload throughput of a 1 GiB file (MiB/s) and the server's peak RSS growth
  during it (MiB; target < 64);
- time from process start to the first complete ``server.files.list`` of
  10,000 files in 100 folders (s), and its steady-state latency (ms, median);
- metadata extraction time of the largest file in ``../shared/gcode``
  (``server.files.metascan``, ms, median of 5; target <= half of Moonraker's).

Run: ``MOONFLASK_REFERENCE_PYTHON=/path/python python bench/bench_files.py [--upload-mib 1024]``
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import requests
import websocket

from common import ServerProc, report, sim_printer

SHARED = os.environ.get("MOONFLASK_SHARED", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared"))
CONFIG = "max_upload_size: 4096\n"   # [server] option: MiB


def make_server(kind: str, root: str, sock: str) -> ServerProc:
    srv = ServerProc(kind, root, sock)
    conf = os.path.join(srv.data, "config", "moonraker.conf")
    with open(conf) as fh:
        text = fh.read()
    with open(conf, "w") as fh:   # the [server] section is first
        fh.write(text.replace("max_websocket_connections: 300\n",
                              "max_websocket_connections: 300\n" + CONFIG, 1))
    return srv


def upload_bench(srv: ServerProc, mib: int) -> tuple[float, float]:
    """(MiB/s, peak RSS growth MiB) of one upload of ``mib`` MiB."""
    boundary = "benchboundary0123456789"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            "filename=\"big.gcode\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    chunk = (b"G1 X10.000 Y10.000 E0.12345\n" * 40000)[:1024 * 1024]
    total = len(head) + mib * len(chunk) + len(tail)

    def body():
        yield head
        for _ in range(mib):
            yield chunk
        yield tail
    base = srv.rss_kib()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], srv.rss_kib())
            except OSError:
                pass
            time.sleep(0.02)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    import http.client
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    conn.putrequest("POST", "/server/files/upload")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(total))
    conn.endheaders()
    for part in body():
        conn.send(part)
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    elapsed = time.monotonic() - t0
    done.set()
    t.join()
    assert resp.status == 201, (srv.kind, resp.status, text[:300])
    os.unlink(os.path.join(srv.data, "gcodes", "big.gcode"))
    return mib / elapsed, (peak[0] - base) / 1024


def make_tree(gcodes: str, folders: int = 100, per: int = 100) -> None:
    data = b"; bench\nG28\nG1 X10 Y10\n"
    for d in range(folders):
        folder = os.path.join(gcodes, f"folder{d:03d}")
        os.makedirs(folder, exist_ok=True)
        for f in range(per):
            with open(os.path.join(folder, f"part{f:03d}.gcode"), "wb") as fh:
                fh.write(data)


def list_bench(srv: ServerProc, expected: int) -> tuple[float, float]:
    """(seconds from process start to a complete list, steady-state ms)."""
    t0 = time.monotonic()
    srv.start_no_wait()
    first = None
    while time.monotonic() - t0 < 300:
        try:
            r = requests.get(srv.url + "/server/files/list", timeout=30)
            if r.status_code == 200 and len(r.json()["result"]) >= expected:
                first = time.monotonic() - t0
                break
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.05)
    if first is None:
        raise TimeoutError(f"{srv.kind}: list never complete")
    time.sleep(2.0)
    lat = []
    for _ in range(15):
        s = time.monotonic()
        r = requests.get(srv.url + "/server/files/list", timeout=60)
        lat.append((time.monotonic() - s) * 1000)
        assert len(r.json()["result"]) >= expected
    return first, statistics.median(lat)


def metascan_bench(srv: ServerProc, name: str) -> float:
    """Median ms of ``server.files.metascan`` of ``name`` (5 runs) over a websocket."""
    ws = websocket.create_connection(srv.ws_url, timeout=120)
    times = []
    for i in range(6):
        s = time.monotonic()
        ws.send(f'{{"jsonrpc":"2.0","method":"server.files.metascan",'
                f'"params":{{"filename":"{name}"}},"id":{i}}}')
        while True:
            msg = ws.recv()
            if f'"id": {i}' in msg or f'"id":{i}' in msg:
                break
        assert '"result"' in msg, msg[:300]
        if i:            # the first run warms caches
            times.append((time.monotonic() - s) * 1000)
    ws.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upload-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="mfbenchfiles-")
    printer = sim_printer.start(os.path.join(root, "klippy"), os.path.join(root, "pgcodes"))
    rows = []
    try:
        sim_printer.wait_ready(printer.socket_path, 60, printer)
        servers = {k: make_server(k, root, printer.socket_path)
                   for k in ("moonflask", "moonraker")}

        results: dict[str, dict[str, float]] = {k: {} for k in servers}
        largest = max(glob.glob(os.path.join(SHARED, "gcode", "*.gcode")), key=os.path.getsize)
        for kind, srv in servers.items():
            # phase A: a fresh server (no start-up scan backlog): upload + metascan
            gcodes = os.path.join(srv.data, "gcodes")
            shutil.copy(largest, os.path.join(gcodes, os.path.basename(largest)))
            srv.start()
            time.sleep(3)
            try:
                rate, rss = upload_bench(srv, args.upload_mib)
            except Exception as err:   # e.g. a timeout of the reference
                print(f"{kind}: upload failed: {err}", flush=True)
                rate, rss = float("nan"), float("nan")
            results[kind]["rate"] = rate
            results[kind]["rss"] = rss
            results[kind]["meta"] = metascan_bench(srv, os.path.basename(largest))
            srv.stop()
            # phase B: 10,000 files in 100 folders, timed from process start
            make_tree(gcodes, 100, args.files // 100)
            srv.start_no_wait = _starter(srv)
            try:
                first, steady = list_bench(srv, args.files)
            except TimeoutError as err:
                print(f"{kind}: {err}", flush=True)
                first, steady = float("nan"), float("nan")
            results[kind]["first"] = first
            results[kind]["steady"] = steady
            srv.stop()
            print(f"{kind}: {results[kind]}", flush=True)
        ours, ref = results["moonflask"], results["moonraker"]
        rows = [
            (f"upload {args.upload_mib} MiB (MiB/s)", ours["rate"], ref["rate"], True),
            # its target is absolute (< 64 MiB, printed below)
            ("peak RSS growth during upload (MiB)", ours["rss"], ref["rss"], False, None),
            (f"first complete list of {args.files} files (s)", ours["first"], ref["first"],
             False),
            ("steady-state list latency (ms, median)", ours["steady"], ref["steady"], False),
            (f"metascan {os.path.basename(largest)} (ms, median)", ours["meta"], ref["meta"],
             False),
        ]
        report(rows)
        print(f"upload RSS growth target < 64 MiB: "
              f"{'met' if ours['rss'] < 64 else 'MISSED'}; metascan target <= 0.5x: "
              f"{'met' if ours['meta'] <= ref['meta'] / 2 else 'MISSED'}")
    finally:
        for srv in list(locals().get("servers", {}).values()):
            srv.stop()
        sim_printer.stop(printer)
        shutil.rmtree(root, ignore_errors=True)


def _starter(srv: ServerProc):
    """Start ``srv`` without waiting for Klippy (the timing starts at spawn)."""
    import subprocess

    def start() -> None:
        log = os.path.join(srv.data, "logs", "moonraker.log")
        from common import REFERENCE_PYTHON, REPO
        if srv.kind == "moonflask":
            cmd = [sys.executable, "-m", "moonflask", "-d", srv.data, "-l", log]
        else:
            cmd = [REFERENCE_PYTHON, "-m", "moonraker", "-d", srv.data, "-l", log]
        srv.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
    return start


if __name__ == "__main__":
    main()
