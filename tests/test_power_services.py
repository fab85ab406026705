"""Issue 14: ``bound_services`` of a power device, against a real
supervisord (PyPI ``supervisor``) through the ``supervisord_cli`` machine
provider; the device is a Tasmota plug on 127.0.0.1 (tests/fake_devices.py)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import fake_devices as fd

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
"""


def program_state(conf: str) -> str:
    out = subprocess.run([SUPERVISORCTL, "-c", conf, "status", "crowsnest"],
                         capture_output=True, text=True).stdout.split()
    return out[1] if len(out) > 1 else ""


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def supervisor(tmp_root):
    sdir = os.path.join(tmp_root, "svpower")
    os.makedirs(sdir, exist_ok=True)
    conf = os.path.join(sdir, "supervisord.conf")
    with open(conf, "w") as fh:
        fh.write(CONF.format(dir=sdir))
    proc = subprocess.Popen([SUPERVISORD, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: program_state(conf) == "RUNNING", what="supervisord started")
        yield conf
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def plug():
    dev = fd.Tasmota()
    dev.on = True
    yield dev
    dev.stop()


@pytest.fixture(scope="module")
def srv(start_server, printer_data, supervisor, plug):
    with open(os.path.join(printer_data, "moonraker.asvc"), "w") as fh:
        fh.write("crowsnest\n")
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = BIN + os.pathsep + old   # the venv's supervisorctl first
    try:
        return start_server(config=f"""[machine]
provider: supervisord_cli
supervisord_config_path: {supervisor}

[power camera]
type: tasmota
address: 127.0.0.1
port: {plug.port}
initial_state: off
bound_services: crowsnest
""")
    finally:
        os.environ["PATH"] = old


def test_bound_service_follows_the_device(srv, supervisor, plug):
    # initial_state: off stops the bound service after initialisation
    wait_for(lambda: program_state(supervisor) == "STOPPED", what="stopped at init")
    assert plug.on is False
    assert srv.result("POST", "/machine/device_power/device?device=camera&action=on") == {
        "camera": "on"}
    wait_for(lambda: program_state(supervisor) == "RUNNING", what="started with the device")
    assert srv.result("POST", "/machine/device_power/off?camera") == {"camera": "off"}
    wait_for(lambda: program_state(supervisor) == "STOPPED", what="stopped with the device")


def test_moonraker_cannot_be_bound(start_server, tmp_root):
    data = os.path.join(tmp_root, "svbad")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    srv = start_server(config="[power x]\ntype: tasmota\naddress: 127.0.0.1\n"
                              "bound_services: moonraker\n", data_path=data)
    info = srv.result("GET", "/server/info")
    assert "power" in info["failed_components"]
    assert any("can not be bound" in w for w in info["warnings"])
    srv.stop()
