"""The ``supervisord_cli`` provider against a real supervisord (PyPI
``supervisor``) started by the test with dummy programs, restarted, stopped
and started through the API while notify_service_state_changed is watched."""
from __future__ import annotations

import os

import pytest

from services import SUPERVISORCTL, SUPERVISORD, ctl_status, supervisord, venv_first_on_path

pytestmark = pytest.mark.skipif(not SUPERVISORD or not SUPERVISORCTL,
                                reason="supervisor is not installed")
PROGRAMS = {"crowsnest": "stopwaitsecs=2\n", "dummy_one": "stopwaitsecs=2\n", "notallowed": ""}


@pytest.fixture(scope="module")
def supervisor(tmp_root):
    with supervisord(os.path.join(tmp_root, "sv"), PROGRAMS) as conf:
        yield conf


@pytest.fixture(scope="module")
def mf(start_server, printer_data, supervisor):
    with open(os.path.join(printer_data, "moonraker.asvc"), "w") as fh:
        fh.write("# allowed services\ndummy_one\n")
    with venv_first_on_path():
        return start_server(config=f"[machine]\nprovider: supervisord_cli\n"
                                   f"supervisord_config_path: {supervisor}\n")


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

