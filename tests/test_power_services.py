"""Issue 14: ``bound_services`` of a power device, against a real
supervisord (PyPI ``supervisor``) through the ``supervisord_cli`` machine
provider; the device is a Tasmota plug on 127.0.0.1 (tests/fake_devices.py)."""
from __future__ import annotations

import os
import time

import pytest

import fake_devices as fd

from services import SUPERVISORCTL, SUPERVISORD, ctl_status, supervisord, venv_first_on_path

pytestmark = pytest.mark.skipif(not SUPERVISORD or not SUPERVISORCTL,
                                reason="supervisor is not installed")


def program_state(conf: str) -> str:
    return ctl_status(conf).get("crowsnest", ("",))[0]


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def supervisor(tmp_root):
    with supervisord(os.path.join(tmp_root, "svpower"), {"crowsnest": "stopwaitsecs=2\n"}) as conf:
        yield conf


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
    with venv_first_on_path():
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
