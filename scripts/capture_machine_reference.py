#!/usr/bin/env python3
"""Capture the reference Moonraker's ``machine.*`` responses into
tests/reference/machine_*.json (same file format as scripts/capture_reference.py).

Runs the simulated printer and the reference side by side, once with the
default ``[machine]`` provider (systemd_dbus, which finds no D-Bus here) and
once with ``provider: none``.  Never calls machine.shutdown / machine.reboot.

    .venv/bin/python scripts/capture_machine_reference.py \
        --reference-python .reference-venv/bin/python
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "scripts"))
import capture_reference as cr  # noqa: E402
import sim_printer  # noqa: E402


def conf_text(port: int, sock: str, machine: str) -> str:
    return (f"[server]\nhost: 127.0.0.1\nport: {port}\nklippy_uds_address: {sock}\n\n"
            "[authorization]\ntrusted_clients:\n  127.0.0.0/8\n  ::1/128\n\n"
            f"{machine}\n")


def run_one(args, tag: str, machine: str, steps) -> None:
    tmp = tempfile.mkdtemp(prefix="mfmach-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(data, "gcodes"),
                            args.klippy_python)
    proc = None
    ws = None
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        with open(conf, "w") as fh:
            fh.write(conf_text(port, sim.socket_path, machine))
        proc = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        ws = cr.WS(f"ws://127.0.0.1:{port}/websocket")
        steps(cap, ws, tag)
    finally:
        if ws is not None:
            ws.close()
        cr.stop_process(proc)
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def default_steps(cap, ws, tag):
    time.sleep(2.5)   # a few proc_stats samples
    cap.http(f"machine_{tag}_http_system_info", "GET", "/machine/system_info")
    cap.rpc(f"machine_{tag}_rpc_system_info", ws, "machine.system_info")
    cap.http(f"machine_{tag}_http_proc_stats", "GET", "/machine/proc_stats")
    cap.rpc(f"machine_{tag}_rpc_proc_stats", ws, "machine.proc_stats")
    start = ws.mark()
    time.sleep(1.5)
    notes = [m for m in ws.notifications(start, keep_noisy=True)
             if m.get("method") == "notify_proc_stat_update"]
    cap.save(f"machine_{tag}_notify_proc_stat_update", "websocket", None, None,
             notes[0] if notes else None, notes)
    cap.http(f"machine_{tag}_http_sudo_info", "GET", "/machine/sudo/info")
    cap.http(f"machine_{tag}_http_sudo_info_check", "GET",
             "/machine/sudo/info?check_access=true")
    cap.rpc(f"machine_{tag}_rpc_sudo_info_check", ws, "machine.sudo.info",
            {"check_access": True})
    cap.http(f"machine_{tag}_http_sudo_password_missing", "POST", "/machine/sudo/password",
             body={})
    cap.http(f"machine_{tag}_http_usb", "GET", "/machine/peripherals/usb")
    cap.http(f"machine_{tag}_http_serial", "GET", "/machine/peripherals/serial")
    cap.http(f"machine_{tag}_http_video", "GET", "/machine/peripherals/video")
    cap.http(f"machine_{tag}_http_canbus", "GET", "/machine/peripherals/canbus")
    cap.rpc(f"machine_{tag}_rpc_canbus_vcan9", ws, "machine.peripherals.canbus",
            {"interface": "vcan9"})
    cap.http(f"machine_{tag}_http_services_restart_bogus", "POST",
             "/machine/services/restart?service=bogus")
    cap.http(f"machine_{tag}_http_services_restart_missing", "POST",
             "/machine/services/restart")
    cap.rpc(f"machine_{tag}_rpc_services_stop_klipper", ws, "machine.services.stop",
            {"service": "klipper"}, linger=0.5)
    cap.http(f"machine_{tag}_http_services_start_webcamd", "POST",
             "/machine/services/start?service=webcamd")
    cap.http(f"machine_{tag}_http_server_info", "GET", "/server/info")


def main() -> None:
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap)
    args = ap.parse_args()
    run_one(args, "dbus", "", default_steps)
    run_one(args, "none", "[machine]\nprovider: none\n", default_steps)


if __name__ == "__main__":
    main()
