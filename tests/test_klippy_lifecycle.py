"""Issue 2: Klippy crashes, restarts and shutdowns, as clients see them."""
from __future__ import annotations

import os
import subprocess
import sys
import time


from helpers import REPO, Moonflask, Printer


def _homed(msg: dict) -> bool:
    status = msg["params"][0]
    return status.get("toolhead", {}).get("homed_axes") == "xyz"


def test_kill_and_restart_klippy(server, printer):
    client = server.ws()
    client.call("printer.objects.subscribe", {"objects": {"toolhead": ["homed_axes"]}})
    printer.kill()
    assert client.wait_notification("notify_klippy_disconnected", timeout=5) == {
        "jsonrpc": "2.0", "method": "notify_klippy_disconnected"}
    info = server.result("GET", "/server/info")
    assert info["klippy_connected"] is False and info["klippy_state"] == "disconnected"
    resp = server.get("/printer/info")
    assert resp.status_code == 503
    assert resp.json()["error"] == {"code": 503, "message": "Klippy Host not connected"}
    printer.start()
    assert client.wait_notification("notify_klippy_ready", timeout=15) == {
        "jsonrpc": "2.0", "method": "notify_klippy_ready"}
    assert server.result("GET", "/server/info")["klippy_state"] == "ready"
    # The subscription made before the crash still delivers.
    server.result("POST", "/printer/gcode/script", json={"script": "G28"})
    client.wait_notification("notify_status_update", timeout=5, predicate=_homed)
    server.result("POST", "/printer/gcode/script", json={"script": "M84"})


def test_emergency_stop_and_firmware_restart(server):
    client = server.ws()
    client.call("printer.objects.subscribe", {"objects": {"webhooks": None}})
    assert server.result("POST", "/printer/emergency_stop") == "ok"
    msg = client.wait_notification("notify_klippy_shutdown", timeout=5)
    assert msg == {"jsonrpc": "2.0", "method": "notify_klippy_shutdown"}
    info = server.result("GET", "/server/info")
    assert info["klippy_connected"] is True and info["klippy_state"] == "shutdown"
    assert server.result("GET", "/printer/info")["state"] == "shutdown"
    resp = server.post("/printer/gcode/script", json={"script": "G28"})
    assert resp.status_code == 400 and "shutdown" in resp.json()["error"]["message"].lower()
    assert server.result("POST", "/printer/firmware_restart") == "ok"
    client.wait_notification("notify_klippy_disconnected", timeout=10)
    client.wait_notification("notify_klippy_ready", timeout=20)
    assert server.result("GET", "/server/info")["klippy_state"] == "ready"


def test_host_restart(server):
    client = server.ws()
    assert server.result("POST", "/printer/restart") == "ok"
    client.wait_notification("notify_klippy_disconnected", timeout=10)
    client.wait_notification("notify_klippy_ready", timeout=20)


def test_server_starts_before_klippy(tmp_root):
    root = os.path.join(tmp_root, "late")
    os.makedirs(os.path.join(root, "gcodes"), exist_ok=True)
    printer = Printer(os.path.join(root, "klippy"), os.path.join(root, "gcodes"))
    srv = Moonflask(root, printer.socket_path).start()
    try:
        info = srv.result("GET", "/server/info")
        assert info["klippy_state"] == "disconnected" and info["klippy_connected"] is False
        client = srv.ws()
        printer.start()
        client.wait_notification("notify_klippy_ready", timeout=20)
        assert srv.result("GET", "/printer/info")["state"] == "ready"
    finally:
        srv.stop()
        printer.stop()


def test_gunicorn_entry(tmp_root, printer):
    root = os.path.join(tmp_root, "guni")
    srv = Moonflask(root, printer.socket_path)  # writes the config; started by gunicorn here
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    env = dict(os.environ, MOONFLASK_DATA_PATH=root)
    proc = subprocess.Popen([gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv.wait_klippy_state("ready", timeout=30)
        client = srv.ws()
        assert client.call("printer.info")["state"] == "ready"
        assert client.call("printer.gcode.script", {"script": "M118 via gunicorn"}) == "ok"
        assert client.wait_notification("notify_gcode_response")["params"] == ["// via gunicorn"]
        assert srv.unix().call("server.info")["klippy_connected"] is True
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_server_restart(tmp_root, printer):
    srv = Moonflask(os.path.join(tmp_root, "restart"), printer.socket_path).start()
    try:
        srv.wait_klippy_state("ready")
        pid = srv.proc.pid
        client = srv.ws()
        assert srv.result("POST", "/server/restart") == "ok"
        client.closed.wait(10)
        assert client.closed.is_set()  # every connection is dropped
        time.sleep(0.5)
        info = srv.wait_klippy_state("ready", timeout=30)
        assert info["klippy_connected"] is True
        assert srv.proc.pid == pid  # re-executed in place, same process id
    finally:
        srv.stop()
