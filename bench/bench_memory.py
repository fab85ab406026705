"""Issue 11 (memory): idle RSS of moonflask against the reference Moonraker,
same printer, same run, with two configs: the bench's (``bench/common.py``)
and the one ``make run`` writes into a fresh printer_data
(``config/moonraker.conf``: announcements fetched from the internet, which
this machine may not reach).  With ``--upload MIB``, also the RSS once back
to idle after one upload of that size.  Target: idle RSS <= 0.8x
Moonraker's.  Run: ``python bench/bench_memory.py [--upload 256]``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REFERENCE_PYTHON, REPO, ServerProc, sim_printer  # noqa: E402
from helpers import stream_upload  # noqa: E402

TARGET = 0.8


def default_config(srv: ServerProc, klippy_socket: str) -> None:
    """Replace ``srv``'s moonraker.conf with the one ``make run`` writes
    (config/moonraker.conf), on ``srv``'s port and the printer's socket."""
    with open(os.path.join(REPO, "config", "moonraker.conf"), encoding="utf-8") as fh:
        text = fh.read()
    text = re.sub(r"(?m)^klippy_uds_address:.*$", f"klippy_uds_address: {klippy_socket}", text)
    text = re.sub(r"(?m)^port:.*$", f"port: {srv.port}", text)
    with open(os.path.join(srv.data, "config", "moonraker.conf"), "w", encoding="utf-8") as fh:
        fh.write(text)


def settled_rss(srv: ServerProc, seconds: float = 20.0) -> float:
    """RSS in MiB once two readings 1 s apart agree within 0.2 MiB."""
    deadline = time.monotonic() + seconds
    last = srv.rss_kib() / 1024
    while time.monotonic() < deadline:
        time.sleep(1)
        now = srv.rss_kib() / 1024
        if abs(now - last) < 0.2:
            return now
        last = now
    return last


def upload(srv: ServerProc, mib: int) -> None:
    """One multipart upload of ``mib`` MiB to /server/files/upload."""
    status = stream_upload(srv.port, "bench_mem.gcode", mib, timeout=600)
    if status != 201:
        raise RuntimeError(f"{srv.kind}: upload answered {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upload", type=int, default=0, metavar="MIB",
                        help="also measure the RSS after one upload of MIB MiB")
    parser.add_argument("--configs", default="bench,default",
                        help="comma list: bench (bench/common.py's), default (make run's)")
    args = parser.parse_args()
    if not os.path.exists(REFERENCE_PYTHON):
        raise SystemExit(f"reference Moonraker not installed at {REFERENCE_PYTHON}")
    root = tempfile.mkdtemp(prefix="mfbenchmem-")
    printer = sim_printer.start(os.path.join(root, "klippy"), os.path.join(root, "gcodes"))
    rows = []
    try:
        sim_printer.wait_ready(printer.socket_path, 60, printer)
        for config in args.configs.split(","):
            servers = {}
            for kind in ("moonflask", "moonraker"):
                srv = ServerProc(kind, os.path.join(root, config), printer.socket_path)
                if config == "default":
                    default_config(srv, printer.socket_path)
                servers[kind] = srv
            try:
                for srv in servers.values():
                    srv.start()
                time.sleep(3)  # as bench.common.Bench: start-up scans, first samples
                idle = {k: settled_rss(s) for k, s in servers.items()}
                rows.append((f"idle RSS, {config} config (MiB)", idle))
                if args.upload:
                    for srv in servers.values():
                        upload(srv, args.upload)
                    after = {k: settled_rss(s) for k, s in servers.items()}
                    rows.append((f"  after a {args.upload} MiB upload (MiB)", after))
            finally:
                for srv in servers.values():
                    srv.stop()
    finally:
        sim_printer.stop(printer)
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'figure':<44}{'moonflask':>10}{'moonraker':>10}{'ratio':>7}  target")
    for name, figs in rows:
        ratio = figs["moonflask"] / figs["moonraker"]
        verdict = f"{'met' if ratio <= TARGET else 'MISSED'} (<= {TARGET})" \
            if name.startswith("idle") else ""
        print(f"{name:<44}{figs['moonflask']:>10.1f}{figs['moonraker']:>10.1f}"
              f"{ratio:>7.2f}  {verdict}")
    with open("/proc/loadavg") as fh:
        print("loadavg:", fh.read().strip())


if __name__ == "__main__":
    main()
