"""The ``system`` updater through PackageKit over a real D-Bus daemon
(``dbus-daemon``, Debian's ``dbus``) started by the test, serving a small
PackageKit stand-in written with jeepney (this machine runs no PackageKit);
moonflask reaches it as its "system bus" through DBUS_SYSTEM_BUS_ADDRESS.
A git_repo whose ``system_dependencies`` file changes installs the new
packages through it.

Run as a script (``python test_update_manager_system.py STATEFILE``) this file
IS the stand-in: it owns org.freedesktop.PackageKit on
$DBUS_SESSION_BUS_ADDRESS.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

UPDATES = {"libfoo;2.0;amd64;debian": "Foo library", "barutil;1.5;amd64;debian": "Bar tools"}
INSTALLED = {"python3"}


def standin_main(state_file: str) -> None:
    from jeepney import (DBusAddress, HeaderFields, MessageType, new_error,
                         new_method_return, new_signal)
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    conn = open_dbus_connection(bus="SESSION")
    conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.PackageKit"))
    calls: list = []
    updates = dict(UPDATES)
    count = [0]

    def record(entry) -> None:
        calls.append(entry)
        with open(state_file + ".tmp", "w") as fh:
            json.dump({"calls": calls}, fh)
        os.replace(state_file + ".tmp", state_file)

    def emit(path: str, member: str, sig: str, body: tuple) -> None:
        conn.send(new_signal(DBusAddress(path, interface="org.freedesktop.PackageKit."
                                         "Transaction"), member, sig, body))

    record("ready")
    while True:
        msg = conn.receive()
        if msg.header.message_type != MessageType.method_call:
            continue
        member = msg.header.fields.get(HeaderFields.member)
        path = msg.header.fields.get(HeaderFields.path)
        if member == "Get":
            conn.send(new_method_return(msg, "v", (("u", 1),)))
        elif member == "CreateTransaction":
            count[0] += 1
            conn.send(new_method_return(msg, "o", (f"/{count[0]}_tx",)))
        elif member in ("RefreshCache", "GetUpdates", "UpdatePackages", "Resolve",
                        "InstallPackages"):
            record([member, list(msg.body)])
            conn.send(new_method_return(msg))
            if member == "GetUpdates":
                for pid, summary in updates.items():
                    emit(path, "Package", "uss", (11, pid, summary))
            elif member == "UpdatePackages":
                for pid in msg.body[1]:
                    emit(path, "Package", "uss", (18, pid, updates.pop(pid, "?")))
            elif member == "Resolve":
                for name in msg.body[1]:
                    if name not in INSTALLED:
                        emit(path, "Package", "uss", (2, f"{name};1.0;amd64;debian", name))
            elif member == "InstallPackages":
                for pid in msg.body[1]:
                    emit(path, "Package", "uss", (10, pid, "installed"))
            emit(path, "Finished", "uu", (1, 10))
        else:
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s",
                                (f"Unknown method {member}",)))


if __name__ == "__main__":
    standin_main(sys.argv[1])
    raise SystemExit(0)

# -- the tests -------------------------------------------------------------------
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from services import DBUS_DAEMON, dbus_with_standin  # noqa: E402
from um_helpers import Origin, head, status, update_messages, wait_initialized  # noqa: E402

pytestmark = pytest.mark.skipif(DBUS_DAEMON is None, reason="dbus-daemon is not installed")


def calls(state: str) -> list:
    with open(state) as fh:
        return json.load(fh)["calls"]


@pytest.fixture
def bus(tmp_root):
    with dbus_with_standin(os.path.join(tmp_root, "pkbus"), os.path.abspath(__file__),
                           "PackageKit stand-in") as found:
        yield found


def test_packagekit_updates_and_dependencies(start_server, tmp_root, bus, monkeypatch):
    address, state = bus
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    base = os.path.join(tmp_root, "ums")
    origin = Origin(os.path.join(base, "o"))
    deps = "scripts/system-dependencies.json"
    origin.commit({deps: json.dumps({"debian": ["python3"]})}, tag="v1.0.0")
    path = origin.clone(os.path.join(base, "ext"))
    new = origin.commit({deps: json.dumps({"debian": ["python3", "libnewdep"]})},
                        tag="v1.1.0")
    srv = start_server(config=(
        "[machine]\nprovider: none\n\n[update_manager]\n\n"
        f"[update_manager ext]\ntype: git_repo\npath: {path}\norigin: {origin.url}\n"
        f"system_dependencies: {deps}\nis_system_service: False\n"),
        data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    vi = status(srv)["version_info"]
    assert list(vi)[0] == "system"
    assert vi["system"] == {"name": "system", "configured_type": "system", "package_count": 2,
                            "package_list": ["barutil", "libfoo"]}
    assert ["RefreshCache", [False]] in calls(state)
    ws = srv.ws()
    assert ws.call("machine.update.upgrade", {"name": "system"}, timeout=60) == "ok"
    msgs = [m["message"] for m in update_messages(ws)]
    assert "libfoo;2.0;amd64;debian: Foo library" in msgs
    assert msgs[-1] == "Package update finished..."
    upd = [c for c in calls(state) if c[0] == "UpdatePackages"]
    assert upd and sorted(upd[0][1][1]) == sorted(UPDATES)
    assert status(srv, "system")["package_count"] == 0
    # the deprecated endpoint does the same (nothing left to update)
    assert srv.result("POST", "/machine/update/system", timeout=60) == "ok"
    # a repo update whose system dependencies grew installs the new package
    assert srv.result("POST", "/machine/update/upgrade", json={"name": "ext"},
                      timeout=60) == "ok"
    assert head(path) == new
    assert ["Resolve", [8, ["python3", "libnewdep"]]] in calls(state)
    inst = [c for c in calls(state) if c[0] == "InstallPackages"]
    assert inst and inst[-1][1][1] == ["libnewdep;1.0;amd64;debian"]
