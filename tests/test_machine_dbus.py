"""The ``systemd_dbus`` provider against a real D-Bus daemon (``dbus-daemon
--session``, Debian's ``dbus``) started by the test, serving a small systemd
Manager stand-in written with jeepney (this machine runs no systemd).
moonflask reaches it as its "system bus" through DBUS_SYSTEM_BUS_ADDRESS.

Run as a script (``python test_machine_dbus.py STATEFILE``) this file IS the
stand-in: it owns org.freedesktop.systemd1 on $DBUS_SESSION_BUS_ADDRESS.
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest


# -- the systemd stand-in (runs in its own process) ----------------------------
UNITS = {   # name: [active_state, sub_state]
    "klipper": ["active", "running"],
    "moonraker": ["active", "running"],
    "crowsnest": ["active", "running"],
    "sonar": ["inactive", "dead"],          # PolicyKit refuses actions on it
    "ssh": ["active", "running"],           # not allowed: never listed
}


def _unit_path(name: str) -> str:
    esc = "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in f"{name}.service")
    return f"/org/freedesktop/systemd1/unit/{esc}"


def standin_main(state_file: str) -> None:
    from jeepney import (DBusAddress, HeaderFields, MessageType, new_error,
                         new_method_return, new_signal)
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    conn = open_dbus_connection(bus="SESSION")
    conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.systemd1"))
    calls: list = []

    def record(entry) -> None:
        calls.append(entry)
        with open(state_file + ".tmp", "w") as fh:
            json.dump({"calls": calls, "units": UNITS}, fh)
        os.replace(state_file + ".tmp", state_file)

    def set_state(name: str, active: str, sub: str) -> None:
        UNITS[name] = [active, sub]
        conn.send(new_signal(
            DBusAddress(_unit_path(name), interface="org.freedesktop.DBus.Properties"),
            "PropertiesChanged", "sa{sv}as",
            ("org.freedesktop.systemd1.Unit",
             {"ActiveState": ("s", active), "SubState": ("s", sub)}, [])))
        time.sleep(0.05)

    record("ready")
    while True:
        msg = conn.receive()
        if msg.header.message_type != MessageType.method_call:
            continue
        member = msg.header.fields.get(HeaderFields.member)
        if member == "ListUnits":
            units = [(f"{n}.service", n, "loaded", a, s, "", _unit_path(n), 0, "", "/")
                     for n, (a, s) in UNITS.items()]
            conn.send(new_method_return(msg, "a(ssssssouso)", (units,)))
        elif member == "Subscribe":
            conn.send(new_method_return(msg))
        elif member in ("StartUnit", "StopUnit", "RestartUnit"):
            unit, mode = msg.body
            name = unit[:-8]
            record([member, unit, mode])
            if name == "sonar":
                conn.send(new_error(msg, "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                                    "s", ("Interactive authentication required.",)))
                continue
            if name not in UNITS:
                conn.send(new_error(msg, "org.freedesktop.systemd1.NoSuchUnit", "s",
                                    (f"Unit {unit} not found.",)))
                continue
            conn.send(new_method_return(msg, "o", ("/org/freedesktop/systemd1/job/1",)))
            if member in ("StopUnit", "RestartUnit"):
                set_state(name, "deactivating", "stop-sigterm")
                set_state(name, "inactive", "dead")
            if member in ("StartUnit", "RestartUnit"):
                set_state(name, "activating", "start")
                set_state(name, "active", "running")
        elif member in ("PowerOff", "Reboot", "Halt"):
            record([member])
            conn.send(new_method_return(msg))
        else:
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s",
                                (f"Unknown method {member}",)))


if __name__ == "__main__":
    standin_main(sys.argv[1])
    raise SystemExit(0)

# -- the tests -------------------------------------------------------------------
from services import DBUS_DAEMON, dbus_with_standin  # noqa: E402

pytestmark = pytest.mark.skipif(DBUS_DAEMON is None, reason="dbus-daemon is not installed")


def read_state(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def bus(tmp_root):
    with dbus_with_standin(os.path.join(tmp_root, "dbus"), os.path.abspath(__file__),
                           "systemd stand-in") as found:
        yield found


@pytest.fixture(scope="module")
def mf(start_server, bus):
    address, _ = bus
    old = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    try:
        return start_server(config="[machine]\nprovider: systemd_dbus\n")
    finally:
        if old is None:
            del os.environ["DBUS_SYSTEM_BUS_ADDRESS"]
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = old


def wait_state(ws, name, active, sub, timeout=10.0):
    return ws.wait_notification(
        "notify_service_state_changed", timeout,
        lambda m: m["params"][0].get(name) == {"active_state": active, "sub_state": sub})


def test_units_listed(mf):
    si = mf.result("GET", "/machine/system_info")["system_info"]
    assert si["provider"] == "systemd_dbus"
    assert si["available_services"] == ["crowsnest", "klipper", "moonraker", "sonar"]
    assert si["service_state"]["sonar"] == {"active_state": "inactive", "sub_state": "dead"}
    assert si["service_state"]["klipper"] == {"active_state": "active", "sub_state": "running"}
    warnings = mf.result("GET", "/server/info")["warnings"]
    assert not any("DBus" in w for w in warnings)


def test_restart_stop_start_with_signals(mf, bus):
    _, state = bus
    ws = mf.ws()
    assert ws.call("machine.services.restart", {"service": "crowsnest"}) == "ok"
    wait_state(ws, "crowsnest", "deactivating", "stop-sigterm")
    wait_state(ws, "crowsnest", "inactive", "dead")
    wait_state(ws, "crowsnest", "active", "running")
    assert ["RestartUnit", "crowsnest.service", "replace"] in read_state(state)["calls"]

    assert mf.result("POST", "/machine/services/stop?service=klipper") == "ok"
    wait_state(ws, "klipper", "inactive", "dead")
    si = mf.result("GET", "/machine/system_info")["system_info"]
    assert si["service_state"]["klipper"] == {"active_state": "inactive", "sub_state": "dead"}
    assert ws.call("machine.services.start", {"service": "klipper"}) == "ok"
    wait_state(ws, "klipper", "active", "running")


def test_policykit_refusal_is_clear(mf):
    resp = mf.post("/machine/services/start?service=sonar")
    assert resp.status_code == 403
    msg = resp.json()["error"]["message"]
    assert "PolicyKit" in msg and "Interactive authentication required." in msg


def test_own_service_restart_answers_first(mf, bus):
    _, state = bus
    ws = mf.ws()
    t0 = time.monotonic()
    assert ws.call("machine.services.restart", {"service": "moonraker"}) == "ok"
    # the answer came before the stand-in saw the restart
    calls = read_state(state)["calls"]
    assert ["RestartUnit", "moonraker.service", "replace"] not in calls
    deadline = t0 + 5
    while time.monotonic() < deadline:
        if ["RestartUnit", "moonraker.service", "replace"] in read_state(state)["calls"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("moonflask's own restart was never requested")


def test_shutdown_and_reboot_go_to_systemd(mf, bus):
    _, state = bus
    assert mf.result("POST", "/machine/shutdown") == "ok"
    assert mf.result("POST", "/machine/reboot") == "ok"
    calls = read_state(state)["calls"]
    assert ["PowerOff"] in calls and ["Reboot"] in calls
