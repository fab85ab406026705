#!/usr/bin/env python3
"""Capture the reference Moonraker's ``machine.update.*`` responses into
tests/reference/update_manager_*.json (the file format of
scripts/capture_reference.py).

The configuration: ``[update_manager]`` without system updates, and one
``git_repo`` extension ``myext`` cloned from a bare "origin" repository made
here with tagged releases (v0.1.0, v0.2.0) and one commit after the last tag,
the clone kept one release behind.  The reference's own ``moonraker`` and
``klipper`` entries describe its pip install and the simulated printer's
pip-installed Klippy.  Recorded: status, refresh (with its
notify_update_refreshed), upgrade / rollback / soft recovery with their
notify_update_response streams, the errors for unknown updaters and a
missing name, and the refusals while printing (and the answer while
paused).  Error tracebacks are dropped.  Nothing here reaches the network.

    .venv/bin/python scripts/capture_update_manager.py \
        --reference-python .reference-venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "scripts"))
import capture_reference as cr  # noqa: E402
import sim_printer  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests", "data"))
from long_gcode import write_long_gcode  # noqa: E402


def git(cwd: str, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="Test", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="Test", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout


def origin_work(origin: str) -> str:
    """The work clone make_repos pushed from."""
    return os.path.join(os.path.dirname(origin), "work")


def make_repos(tmp: str) -> tuple[str, str]:
    """A bare origin with v0.1.0, v0.2.0 and one later commit; a clone at v0.1.0."""
    origin = os.path.join(tmp, "origin.git")
    work = os.path.join(tmp, "work")
    git(tmp, "init", "-q", "--bare", "-b", "master", origin)
    git(tmp, "clone", "-q", origin, work)
    for i, tag in enumerate(("v0.1.0", "v0.2.0", None)):
        with open(os.path.join(work, "app.py"), "w") as fh:
            fh.write(f"VERSION = {i}\n")
        git(work, "add", "app.py")
        git(work, "commit", "-q", "-m", f"Change {i}\n\nBody of change {i}.")
        if tag:
            git(work, "tag", "-a", tag, "-m", tag)
    git(work, "push", "-q", "--tags", "origin", "master")
    managed = os.path.join(tmp, "myext")
    git(tmp, "clone", "-q", origin, managed)
    git(managed, "reset", "-q", "--hard", "v0.1.0")
    return origin, managed


def strip_tracebacks(out_dir: str, names: list[str]) -> None:
    """Drop the reference's error tracebacks (they hold this machine's paths)."""
    for name in names:
        path = os.path.join(out_dir, name + ".json")
        with open(path) as fh:
            doc = json.load(fh)
        err = (doc.get("body") or {}).get("error") if isinstance(doc.get("body"), dict) else None
        if isinstance(err, dict) and err.pop("traceback", None) is not None:
            with open(path, "w") as fh:
                json.dump(doc, fh, indent=2)
                fh.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mfupd-", dir="/tmp")
    data = os.path.join(tmp, "data")
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    origin, managed = make_repos(tmp)
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(data, "gcodes"),
                            args.klippy_python)
    proc = ws = None
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        with open(conf, "w") as fh:
            fh.write(f"[server]\nhost: 127.0.0.1\nport: {port}\n"
                     f"klippy_uds_address: {sim.socket_path}\n\n"
                     "[authorization]\ntrusted_clients:\n  127.0.0.0/8\n\n"
                     "[machine]\nprovider: none\n\n"
                     "[update_manager]\nenable_system_updates: False\n\n"
                     f"[update_manager myext]\ntype: git_repo\npath: {managed}\n"
                     f"origin: {origin}\nprimary_branch: master\nchannel: dev\n"
                     "is_system_service: False\ninfo_tags:\n  desc=My Extension\n")
        proc = cr.start_moonraker(args.reference_python, data, conf, tmp)
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        ws = cr.WS(f"ws://127.0.0.1:{port}/websocket")
        time.sleep(3)  # the initial refresh
        cap.http("update_manager_http_status", "GET", "/machine/update/status")
        cap.rpc("update_manager_rpc_status", ws, "machine.update.status")
        cap.rpc("update_manager_rpc_refresh_myext", ws, "machine.update.refresh",
                {"name": "myext"}, linger=1.0)
        cap.http("update_manager_http_refresh_unknown", "POST",
                 "/machine/update/refresh", body={"name": "nothing"})
        cap.http("update_manager_http_upgrade_unknown", "POST",
                 "/machine/update/upgrade", body={"name": "nothing"})
        cap.http("update_manager_http_recover_unknown", "POST",
                 "/machine/update/recover", body={"name": "nothing"})
        cap.http("update_manager_http_rollback_unknown", "POST",
                 "/machine/update/rollback", body={"name": "nothing"})
        cap.http("update_manager_http_recover_missing", "POST",
                 "/machine/update/recover", body={})
        cap.rpc("update_manager_rpc_status_refresh", ws, "machine.update.status",
                {"refresh": True})
        cap.rpc("update_manager_rpc_upgrade_myext", ws, "machine.update.upgrade",
                {"name": "myext"}, linger=3.0, timeout=60)
        cap.http("update_manager_http_status_after_upgrade", "GET", "/machine/update/status")
        cap.rpc("update_manager_rpc_rollback_myext", ws, "machine.update.rollback",
                {"name": "myext"}, linger=3.0, timeout=60)
        cap.http("update_manager_http_status_after_rollback", "GET",
                 "/machine/update/status")
        with open(os.path.join(managed, "app.py"), "a") as fh:
            fh.write("# local change\n")
        cap.rpc("update_manager_rpc_refresh_dirty", ws, "machine.update.refresh",
                {"name": "myext"}, linger=1.0)
        cap.rpc("update_manager_rpc_recover_soft", ws, "machine.update.recover",
                {"name": "myext", "hard": False}, linger=3.0, timeout=60)
        cap.http("update_manager_http_status_after_recover", "GET",
                 "/machine/update/status")
        # refused while printing (a long print; then paused)
        write_long_gcode(os.path.join(data, "gcodes", "long.gcode"), 20)
        git(origin_work(origin), "commit", "--allow-empty", "-q", "-m", "Change 3")
        git(origin_work(origin), "push", "-q", "origin", "master")
        cap.http_raw("POST", "/printer/print/start?filename=long.gcode")
        time.sleep(1.5)
        cap.http("update_manager_http_print_state", "GET",
                 "/printer/objects/query?print_stats=state")
        cap.http("update_manager_http_upgrade_printing", "POST", "/machine/update/upgrade",
                 body={"name": "myext"})
        cap.http("update_manager_http_refresh_printing", "POST", "/machine/update/refresh",
                 body={"name": "myext"})
        cap.http_raw("POST", "/printer/print/pause")
        time.sleep(1.0)
        cap.http("update_manager_http_print_state_paused", "GET",
                 "/printer/objects/query?print_stats=state")
        cap.http("update_manager_http_upgrade_paused", "POST", "/machine/update/upgrade",
                 body={"name": "myext"})
        cap.http_raw("POST", "/printer/print/cancel")
        strip_tracebacks(args.out, cap.written)
    finally:
        if ws is not None:
            ws.close()
        cr.stop_process(proc)
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


if __name__ == "__main__":
    main()
