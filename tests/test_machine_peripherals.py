"""Peripheral discovery against a fake sysfs / dev tree built by the test
(this machine has no USB, no cameras, no CAN), the usb.ids parser, the CAN
frame handling, and sudo requests with notify_sudo_alert (in-process)."""
from __future__ import annotations

import os

import pytest

from moonflask.components.machine import peripherals
from moonflask.components.machine.peripherals import UsbIds

USB_IDS = """\
# test usb.ids
1d50  OpenMoko, Inc.
\t614e  Klipper 3d-Printer Firmware
1d6b  Linux Foundation
\t0002  2.0 root hub
C 02  Communications
\t02  Abstract (modem)
\t\t01  AT-commands (v.25ter)
C 09  Hub
\t00  Unused
\t\t00  Full speed (or root) hub
\t\t01  Single TT
AT 0000  Unknown
"""


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text + "\n")


@pytest.fixture()
def tree(tmp_path):
    sys_root = tmp_path / "sys"
    dev_root = tmp_path / "dev"
    devices = sys_root / "devices" / "pci0000:00" / "usb1"
    # root hub 1:1 and a Klipper MCU 1:4 with a CDC-ACM tty
    hub = devices
    for name, val in {"idVendor": "1d6b", "idProduct": "0002", "busnum": "1", "devnum": "1",
                      "manufacturer": "Linux 6.1 xhci-hcd", "product": "xHCI Host Controller",
                      "serial": "0000:00:14.0", "bDeviceClass": "09",
                      "bDeviceSubClass": "00", "bDeviceProtocol": "01"}.items():
        write(str(hub / name), val)
    mcu = devices / "1-1"
    for name, val in {"idVendor": "1d50", "idProduct": "614e", "busnum": "1", "devnum": "4",
                      "manufacturer": "Klipper", "product": "stm32f446xx",
                      "serial": "ABC123", "bDeviceClass": "02",
                      "bDeviceSubClass": "02", "bDeviceProtocol": "00"}.items():
        write(str(mcu / name), val)
    intf = mcu / "1-1:1.0"
    write(str(intf / "bInterfaceClass"), "02")
    drivers = sys_root / "bus" / "usb" / "drivers"
    os.makedirs(drivers / "cdc_acm")
    os.symlink(drivers / "cdc_acm", intf / "driver")
    acm_class = intf / "tty" / "ttyACM0"
    os.makedirs(acm_class)
    bus_devices = sys_root / "bus" / "usb" / "devices"
    os.makedirs(bus_devices)
    os.symlink(hub, bus_devices / "usb1")
    os.symlink(mcu, bus_devices / "1-1")
    os.symlink(intf, bus_devices / "1-1:1.0")
    # a hardware UART and an unused 8250 placeholder
    platform = sys_root / "devices" / "platform" / "serial8250"
    os.makedirs(sys_root / "bus" / "platform" / "drivers" / "serial8250")
    for name in ("ttyS0", "ttyS1"):
        os.makedirs(platform / name)
        os.symlink(sys_root / "bus" / "platform" / "drivers" / "serial8250",
                   platform / name / "driver")
    tty = sys_root / "class" / "tty"
    for name, target, typ in (("ttyACM0", intf, None), ("ttyS0", platform / "ttyS0", "4"),
                              ("ttyS1", platform / "ttyS1", "0")):
        os.makedirs(tty / name)
        os.symlink(target, tty / name / "device")
        if typ:
            write(str(tty / name / "type"), typ)
    os.makedirs(tty / "tty0")   # a virtual console: no device link
    # /dev links
    os.makedirs(dev_root / "serial" / "by-id")
    os.makedirs(dev_root / "serial" / "by-path")
    write(str(dev_root / "ttyACM0"), "")
    os.symlink("../../ttyACM0", dev_root / "serial" / "by-id" / "usb-Klipper_stm32f446xx_ABC123-if00")
    os.symlink("../../ttyACM0", dev_root / "serial" / "by-path" / "pci-0000:00:14.0-usb-0:1:1.0")
    ids_path = tmp_path / "usb.ids"
    ids_path.write_text(USB_IDS)
    return str(sys_root), str(dev_root), UsbIds(str(ids_path))


def test_usb_ids_parser(tree):
    ids = tree[2]
    assert ids.vendors == {"1d50": "OpenMoko, Inc.", "1d6b": "Linux Foundation"}
    assert ids.products[("1d50", "614e")] == "Klipper 3d-Printer Firmware"
    assert ids.classes == {"02": "Communications", "09": "Hub"}
    assert ids.protocols[("09", "00", "01")] == "Single TT"


def test_system_usb_ids_when_installed():
    ids = UsbIds()
    if ids.path is None:
        pytest.skip("no usb.ids on this host (Debian package usb.ids / hwdata)")
    assert ids.vendors["1d6b"] == "Linux Foundation"
    assert ids.products[("1d6b", "0002")] == "2.0 root hub"


def test_usb_devices(tree):
    sys_root, _dev, ids = tree
    devs = peripherals.usb_devices(sys_root, ids)
    assert devs == [
        {"device_num": 4, "bus_num": 1, "vendor_id": "1d50", "product_id": "614e",
         "usb_location": "1:4", "manufacturer": "Klipper", "product": "stm32f446xx",
         "serial": "ABC123", "class": "Communications", "subclass": "Abstract (modem)",
         "protocol": None, "description": "OpenMoko, Inc. Klipper 3d-Printer Firmware"},
        {"device_num": 1, "bus_num": 1, "vendor_id": "1d6b", "product_id": "0002",
         "usb_location": "1:1", "manufacturer": "Linux 6.1 xhci-hcd",
         "product": "xHCI Host Controller", "serial": "0000:00:14.0", "class": "Hub",
         "subclass": "Unused", "protocol": "Single TT",
         "description": "Linux Foundation 2.0 root hub"},
    ]


def test_serial_devices(tree):
    sys_root, dev_root, _ = tree
    devs = peripherals.serial_devices(sys_root, dev_root)
    assert devs == [
        {"device_type": "usb", "device_path": f"{dev_root}/ttyACM0", "device_name": "ttyACM0",
         "driver_name": "cdc_acm",
         "path_by_hardware": f"{dev_root}/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0",
         "path_by_id": f"{dev_root}/serial/by-id/usb-Klipper_stm32f446xx_ABC123-if00",
         "usb_location": "1:4"},
        {"device_type": "hardware_uart", "device_path": f"{dev_root}/ttyS0",
         "device_name": "ttyS0", "driver_name": "serial8250", "path_by_hardware": None,
         "path_by_id": None, "usb_location": None},
    ]


def test_no_usb_no_video(tmp_path):
    assert peripherals.usb_devices(str(tmp_path)) == []
    assert peripherals.serial_devices(str(tmp_path), str(tmp_path)) == []
    assert peripherals.v4l2_devices(str(tmp_path), str(tmp_path)) == []


def test_v4l2_node_that_is_not_a_device(tmp_path):
    """A video4linux entry whose /dev node does not answer VIDIOC_QUERYCAP is skipped."""
    os.makedirs(tmp_path / "sys" / "class" / "video4linux" / "video0")
    write(str(tmp_path / "dev" / "video0"), "")
    assert peripherals.v4l2_devices(str(tmp_path / "sys"), str(tmp_path / "dev")) == []


def test_can_frame_layout():
    frame = peripherals._CAN_FRAME.pack(0x3F1, 8, bytes([0x20, 1, 2, 3, 4, 5, 6, 0x11]))
    assert len(frame) == 16
    can_id, dlc, data = peripherals._CAN_FRAME.unpack(frame)
    assert (can_id, dlc, data[1:7].hex(), peripherals.APPLICATIONS[data[7]]) == \
        (0x3F1, 8, "010203040506", "Katapult")


# -- sudo requests ----------------------------------------------------------------
def test_sudo_requests_and_alerts(tmp_path):
    from moonflask.app import Server
    from moonflask.components.machine import Machine
    srv = Server(str(tmp_path), log_file="")
    machine = Machine(srv, None)
    seen = []
    srv.events.add_notify_hook(lambda method, params: seen.append((method, params)))
    ran = []
    machine.sudo.register_request(lambda: ran.append(1) or "Service file updated",
                                  "Sudo password required to update moonflask's service.")
    assert seen == [("notify_sudo_alert", [{
        "sudo_requested": True,
        "sudo_messages": ["Sudo password required to update moonflask's service."]}])]
    info = machine.sudo.info(False)
    assert info["sudo_requested"] is True and info["request_messages"] == [
        "Sudo password required to update moonflask's service."]
    if os.geteuid() != 0:
        pytest.skip("needs root for a password that sudo accepts")
    res = machine.sudo.set_password("anything")
    assert res == {"sudo_responses": ["Service file updated", "Sudo password successfully set."],
                   "is_restarting": False}
    assert ran == [1]
    assert seen[-1] == ("notify_sudo_alert", [{"sudo_requested": False, "sudo_messages": []}])
    assert machine.sudo.info(False)["sudo_requested"] is False
