"""The ``supervisord_cli`` provider against a real supervisord (PyPI
``supervisor``) started by the test with dummy programs, restarted, stopped
and started through the API while notify_service_state_changed is watched."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)


def _tool(name: str) -> str | None:
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


SUPERVISORD = _tool("supervisord")
SUPERVISORCTL = _tool("supervisorctl")
pytestmark = pytest.mark.skipif(not SUPERVISORD or not SUPERVISORCTL,
                                reason="supervisor is not installed")

CONF = """\
[unix_http_server]
file={dir}/supervisor.sock

[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock

[program:crowsnest]
command=/bin/sleep 100000
startsecs=0
stopwaitsecs=2

[program:dummy_one]
command=/bin/sleep 100000
startsecs=0
stopwaitsecs=2

[program:notallowed]
command=/bin/sleep 100000
startsecs=0
"""


def ctl_status(conf: str) -> dict[str, tuple[str, int | None]]:
    out = subprocess.run([SUPERVISORCTL, "-c", conf, "status"], capture_output=True,
                         text=True).stdout
    res = {}
    for line in out.splitlines():
        parts = line.split()
        pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
        res[parts[0]] = (parts[1], pid)
    return res


@pytest.fixture(scope="module")
def supervisor(tmp_root):
    sdir = os.path.join(tmp_root, "sv")
    os.makedirs(sdir, exist_ok=True)
    conf = os.path.join(sdir, "supervisord.conf")
    with open(conf, "w") as fh:
        fh.write(CONF.format(dir=sdir))
    proc = subprocess.Popen([SUPERVISORD, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        st = ctl_status(conf)
        if st and all(v[0] == "RUNNING" for v in st.values()):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("supervisord did not start its programs")
    yield conf
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def mf(start_server, printer_data, supervisor):
    with open(os.path.join(printer_data, "moonraker.asvc"), "w") as fh:
        fh.write("# allowed services\ndummy_one\n")
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = BIN + os.pathsep + old   # the venv's supervisorctl first
    try:
        return start_server(config=f"[machine]\nprovider: supervisord_cli\n"
                                   f"supervisord_config_path: {supervisor}\n")
    finally:
        os.environ["PATH"] = old


def wait_state(ws, name, active, sub, timeout=10.0):
    return ws.wait_notification(
        "notify_service_state_changed", timeout,
        lambda m: m["params"][0].get(name) == {"active_state": active, "sub_state": sub})


def test_services_listed(mf):
    si = mf.result("GET", "/machine/system_info")["system_info"]
    assert si["provider"] == "supervisord_cli"
    assert si["available_services"] == ["crowsnest", "dummy_one"]
    assert si["service_state"] == {
        "crowsnest": {"active_state": "active", "sub_state": "running"},
        "dummy_one": {"active_state": "active", "sub_state": "running"}}
    assert "notallowed" not in si["service_state"]


def test_stop_start_restart(mf, supervisor):
    ws = mf.ws()
    assert ws.call("machine.services.stop", {"service": "crowsnest"}) == "ok"
    wait_state(ws, "crowsnest", "inactive", "dead")
    assert ctl_status(supervisor)["crowsnest"][0] == "STOPPED"
    si = mf.result("GET", "/machine/system_info")["system_info"]
    assert si["service_state"]["crowsnest"] == {"active_state": "inactive", "sub_state": "dead"}

    assert mf.result("POST", "/machine/services/start?service=crowsnest") == "ok"
    wait_state(ws, "crowsnest", "active", "running")
    assert ctl_status(supervisor)["crowsnest"][0] == "RUNNING"

    old_pid = ctl_status(supervisor)["dummy_one"][1]
    assert ws.call("machine.services.restart", {"service": "dummy_one"}) == "ok"
    wait_state(ws, "dummy_one", "inactive", "dead")
    wait_state(ws, "dummy_one", "active", "running")
    state, new_pid = ctl_status(supervisor)["dummy_one"]
    assert state == "RUNNING" and new_pid != old_pid


def test_not_allowed_and_external_change(mf, supervisor):
    resp = mf.post("/machine/services/restart?service=notallowed")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "Service 'notallowed' not allowed"
    resp = mf.post("/machine/services/start?service=webcamd")
    assert resp.json()["error"]["message"] == "Service 'webcamd' not installed"

