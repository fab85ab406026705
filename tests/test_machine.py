"""machine.* on this host with the default provider (systemd_dbus, which finds
no system D-Bus here) and with ``provider: none``: system info against what
/proc, /sys and ``ip`` report, sudo, peripherals, service errors, and the
response shapes of the reference (tests/reference/machine_*.json)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def ref(name: str) -> dict:
    with open(os.path.join(HERE, "reference", name + ".json")) as fh:
        return json.load(fh)


def assert_same_shape(ours, theirs, path="$", exact_keys=True):
    """Keys and JSON types match (recursively); lists compare their first items."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), (path, ours)
        if exact_keys:
            assert list(ours) == list(theirs) or set(ours) == set(theirs), \
                (path, sorted(ours), sorted(theirs))
        for key, val in theirs.items():
            if key in ours:
                assert_same_shape(ours[key], val, f"{path}.{key}", exact_keys)
    elif isinstance(theirs, list):
        assert isinstance(ours, list), (path, ours)
        if ours and theirs:
            assert_same_shape(ours[0], theirs[0], f"{path}[0]", exact_keys)
    elif theirs is None:
        pass
    elif isinstance(theirs, bool):
        assert isinstance(ours, bool), (path, ours)
    elif isinstance(theirs, (int, float)):
        assert isinstance(ours, (int, float)) and not isinstance(ours, bool), (path, ours)
    else:
        assert isinstance(ours, type(theirs)), (path, ours, theirs)


@pytest.fixture(scope="module")
def mf(start_server):
    return start_server()


@pytest.fixture(scope="module")
def mf_none(start_server, printer_data):
    data = os.path.join(printer_data, "none")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    return start_server(config="[machine]\nprovider: none\n", data_path=data)


def test_system_info_shape_matches_reference(mf):
    info = mf.result("GET", "/machine/system_info")
    theirs = ref("machine_dbus_http_system_info")["body"]["result"]
    assert_same_shape(info, theirs)
    si = info["system_info"]
    assert si["provider"] == "systemd_dbus"
    assert si["available_services"] == []
    assert si["service_state"] == {}
    assert si["instance_ids"] == {"moonraker": "moonraker", "klipper": "klipper"}
    warnings = mf.result("GET", "/server/info")["warnings"]
    assert any("DBus Connection Not available" in w for w in warnings)


def test_system_info_values(mf):
    si = mf.result("GET", "/machine/system_info")["system_info"]
    cpu = si["cpu_info"]
    assert cpu["cpu_count"] == os.cpu_count()
    assert cpu["processor"] == platform.machine()
    assert cpu["bits"] in ("32bit", "64bit")
    with open("/proc/meminfo") as fh:
        total = int(fh.readline().split()[1])
    assert cpu["total_memory"] == total and cpu["memory_units"] == "kB"
    with open("/proc/cpuinfo") as fh:
        model_names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
    if model_names:
        assert cpu["cpu_desc"] == model_names[0]
    assert si["sd_info"] == ({} if not os.path.isdir("/sys/block/mmcblk0") else si["sd_info"])
    dist = si["distribution"]
    import distro
    assert dist["id"] == distro.id() and dist["name"] == distro.name(pretty=True)
    assert dist["kernel_version"] == platform.release()
    assert si["python"]["version"][:3] == list(sys.version_info[:3])
    virt = si["virtualization"]
    assert virt["virt_type"] in ("none", "container", "vm")
    if os.path.exists("/usr/bin/systemd-detect-virt"):
        out = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True)
        assert virt["virt_identifier"] == out.stdout.strip()
    # network: every address `ip` reports for non-loopback interfaces, with the MAC
    links = json.loads(subprocess.run(["ip", "-json", "address"], capture_output=True,
                                      text=True).stdout)
    expected = {}
    for link in links:
        if link.get("link_type") == "loopback":
            continue
        addrs = {a["local"] for a in link.get("addr_info", [])
                 if a.get("family") in ("inet", "inet6")}
        if addrs:
            expected[link["ifname"]] = (link["address"], addrs)
    assert set(si["network"]) == set(expected)
    for name, (mac, addrs) in expected.items():
        assert si["network"][name]["mac_address"] == mac
        got = {a["address"] for a in si["network"][name]["ip_addresses"]}
        assert got == addrs
        for a in si["network"][name]["ip_addresses"]:
            assert a["family"] in ("ipv4", "ipv6")
            assert a["is_link_local"] == a["address"].startswith("fe80:")
    can_ifaces = [n for n in os.listdir("/sys/class/net")
                  if open(f"/sys/class/net/{n}/type").read().strip() == "280"]
    assert sorted(si["canbus"]) == sorted(can_ifaces)


def test_system_info_over_websocket(mf):
    ws = mf.ws()
    res = ws.call("machine.system_info")
    assert_same_shape(res, ref("machine_dbus_rpc_system_info")["body"]["result"])


def test_provider_none(mf_none):
    si = mf_none.result("GET", "/machine/system_info")["system_info"]
    assert si["provider"] == "none" and si["available_services"] == []
    resp = mf_none.post("/machine/shutdown")
    assert resp.status_code == 503
    assert "provider is 'none'" in resp.json()["error"]["message"]
    resp = mf_none.post("/machine/reboot")
    assert resp.status_code == 503
    ws = mf_none.ws()
    reply = ws.request("machine.shutdown")
    assert reply["error"]["code"] == 503


def test_shutdown_without_dbus_is_a_clear_error(mf):
    resp = mf.post("/machine/shutdown")
    assert resp.status_code == 503
    assert "not connected" in resp.json()["error"]["message"]


@pytest.mark.parametrize("fixture,method,path", [
    ("machine_none_http_services_restart_bogus", "POST", "/machine/services/restart?service=bogus"),
    ("machine_none_http_services_restart_missing", "POST", "/machine/services/restart"),
    ("machine_none_http_services_start_webcamd", "POST", "/machine/services/start?service=webcamd"),
])
def test_service_errors_match_reference(mf_none, fixture, method, path):
    theirs = ref(fixture)
    resp = mf_none.post(path)
    assert resp.status_code == theirs["status"]
    assert resp.json()["error"]["message"] == theirs["body"]["error"]["message"]


def test_service_stop_klipper_not_allowed_over_rpc(mf_none):
    theirs = ref("machine_none_rpc_services_stop_klipper")["body"]["error"]
    reply = mf_none.ws().request("machine.services.stop", {"service": "klipper"})
    assert reply["error"] == theirs


def test_sudo_info(mf):
    theirs = ref("machine_dbus_http_sudo_info")["body"]["result"]
    ours = mf.result("GET", "/machine/sudo/info")
    assert_same_shape(ours, theirs)
    import getpass
    assert ours == {"sudo_access": None, "linux_user": getpass.getuser(),
                    "sudo_requested": False, "request_messages": []}
    checked = mf.result("GET", "/machine/sudo/info?check_access=true")
    assert isinstance(checked["sudo_access"], bool)
    if os.geteuid() == 0:
        assert checked["sudo_access"] is True   # root needs no sudo


def test_sudo_password(mf):
    resp = mf.post("/machine/sudo/password", json={})
    theirs = ref("machine_dbus_http_sudo_password_missing")
    assert resp.status_code == theirs["status"]
    assert resp.json()["error"]["message"] == theirs["body"]["error"]["message"]
    resp = mf.post("/machine/sudo/password", json={"password": "secret"})
    if os.geteuid() == 0:
        # root: `sudo -S -k true` needs no password (or sudo is absent)
        assert resp.status_code == 200
        assert resp.json()["result"] == {"sudo_responses": ["Sudo password successfully set."],
                                         "is_restarting": False}
    else:
        assert resp.status_code in (200, 401, 503)


def test_peripherals_on_this_host(mf):
    usb = mf.result("GET", "/machine/peripherals/usb")
    assert_same_shape(usb, ref("machine_dbus_http_usb")["body"]["result"])
    if not os.path.isdir("/sys/bus/usb/devices"):
        assert usb == {"usb_devices": []}
    serial = mf.result("GET", "/machine/peripherals/serial")
    theirs = ref("machine_dbus_http_serial")["body"]["result"]
    assert_same_shape(serial, theirs)
    # the reference saw the same tty devices on this host
    ref_names = {d["device_name"] for d in theirs["serial_devices"]}
    ours = {d["device_name"]: d for d in serial["serial_devices"]}
    if ref_names:
        assert set(ours) == ref_names
        for d in theirs["serial_devices"]:
            assert ours[d["device_name"]] == d
    video = mf.result("GET", "/machine/peripherals/video")
    assert_same_shape(video, ref("machine_dbus_http_video")["body"]["result"])
    if not os.path.isdir("/sys/class/video4linux"):
        assert video == {"v4l2_devices": [], "libcamera_devices": []}


def test_canbus_clear_errors(mf):
    resp = mf.get("/machine/peripherals/canbus?interface=nosuchcan0")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "CAN interface 'nosuchcan0' does not exist"
    if not os.path.exists("/sys/class/net/can0"):
        resp = mf.get("/machine/peripherals/canbus")
        assert resp.status_code == 400
        assert "can0" in resp.json()["error"]["message"]
    # an existing non-CAN interface on a host without SocketCAN: 503 naming why
    import socket
    try:
        socket.socket(socket.PF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
        has_can = True
    except OSError:
        has_can = False
    if not has_can:
        reply = mf.ws().request("machine.peripherals.canbus", {"interface": "lo"})
        assert reply["error"]["code"] == 503
        assert "SocketCAN is not available" in reply["error"]["message"]


def test_config_validation(start_server, printer_data):
    data = os.path.join(printer_data, "badprov")
    os.makedirs(data, exist_ok=True)
    srv = start_server(config="[machine]\nprovider: bogus\n", data_path=data)
    info = srv.result("GET", "/server/info")
    assert "machine" in info["failed_components"]
    assert any("provider" in w and "bogus" in w for w in info["warnings"])
    assert srv.get("/machine/system_info").status_code == 404
