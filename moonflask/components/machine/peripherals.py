"""Peripheral discovery: USB devices, serial ports, V4L2 / libcamera video
devices and unassigned CAN nodes.

USB, serial and video are read from sysfs (the same attributes udev and
pyudev expose) below a configurable root, so the code runs against a fake
tree in tests; device links come from ``/dev/serial/by-*`` and
``/dev/v4l/by-*``.  Names of vendors, products and classes come from the
system's ``usb.ids`` (Debian ``usb.ids``/``usbutils``/``hwdata``).
Spec: web_api.md "List USB Devices", "List Serial Devices", "List Video
Capture Devices", "Query Unassigned Canbus UUIDs".
"""
from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
import time
from typing import Any

from ...api import ApiError
from .sysinfo import read_text

_VENDOR_RE = re.compile(r"^[0-9a-fA-F]{4}  ")
USB_IDS_PATHS = ("/usr/share/misc/usb.ids", "/usr/share/hwdata/usb.ids",
                 "/var/lib/usbutils/usb.ids", "/usr/share/usb.ids")


class UsbIds:
    """A parsed usb.ids: vendors, products and class/subclass/protocol names.

    Args:
        path: the usb.ids file; the first of USB_IDS_PATHS that exists when None.
    """

    def __init__(self, path: str | None = None) -> None:
        self.vendors: dict[str, str] = {}
        self.products: dict[tuple[str, str], str] = {}
        self.classes: dict[str, str] = {}
        self.subclasses: dict[tuple[str, str], str] = {}
        self.protocols: dict[tuple[str, str, str], str] = {}
        if path is None:
            path = next((p for p in USB_IDS_PATHS if os.path.isfile(p)), None)
        self.path = path
        if path:
            self._parse(path)

    def _parse(self, path: str) -> None:
        vendor = cls = sub = None
        with open(path, "rb") as fh:
            for raw in fh:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if not line or line.startswith("#"):
                    continue
                if not line.startswith("\t"):
                    vendor = cls = sub = None
                    if line.startswith("C "):
                        code, _, name = line[2:].partition("  ")
                        cls = code.lower()
                        self.classes[cls] = name.strip()
                    elif _VENDOR_RE.match(line):
                        vendor = line[:4].lower()
                        self.vendors[vendor] = line[6:].strip()
                    continue
                if line.startswith("\t\t"):
                    if cls is not None and sub is not None:
                        code, _, name = line[2:].partition("  ")
                        self.protocols[(cls, sub, code.lower())] = name.strip()
                    continue
                code, _, name = line[1:].partition("  ")
                if vendor is not None:
                    self.products[(vendor, code.lower())] = name.strip()
                elif cls is not None:
                    sub = code.lower()
                    self.subclasses[(cls, sub)] = name.strip()


_USB_IDS: UsbIds | None = None


def usb_ids() -> UsbIds:
    """The system usb.ids, parsed once (about 25 ms)."""
    global _USB_IDS
    if _USB_IDS is None:
        _USB_IDS = UsbIds()
    return _USB_IDS


def _attr(path: str, name: str) -> str | None:
    val = read_text(os.path.join(path, name), "")
    return val or None


def usb_devices(sys_root: str = "/sys", ids: UsbIds | None = None) -> list[dict[str, Any]]:
    """``usb_devices``: every USB device (not interface) under
    ``SYS/bus/usb/devices``; an empty list on a host without USB."""
    base = os.path.join(sys_root, "bus", "usb", "devices")
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for entry in entries:
        path = os.path.join(base, entry)
        if ":" in entry or not os.path.isfile(os.path.join(path, "idVendor")):
            continue
        vid = (_attr(path, "idVendor") or "").lower()
        pid = (_attr(path, "idProduct") or "").lower()
        try:
            busnum = int(_attr(path, "busnum") or 0)
            devnum = int(_attr(path, "devnum") or 0)
        except ValueError:
            continue
        if ids is None:
            ids = usb_ids()
        cls = (_attr(path, "bDeviceClass") or "").lower()
        sub = (_attr(path, "bDeviceSubClass") or "").lower()
        proto = (_attr(path, "bDeviceProtocol") or "").lower()
        vendor_name = ids.vendors.get(vid)
        product_name = ids.products.get((vid, pid))
        desc = None
        if vendor_name or product_name:
            desc = " ".join(p for p in (vendor_name, product_name) if p)
        out.append({
            "device_num": devnum,
            "bus_num": busnum,
            "vendor_id": vid,
            "product_id": pid,
            "usb_location": f"{busnum}:{devnum}",
            "manufacturer": _attr(path, "manufacturer") or vendor_name,
            "product": _attr(path, "product") or product_name,
            "serial": _attr(path, "serial"),
            "class": ids.classes.get(cls) if cls != "00" else None,
            "subclass": ids.subclasses.get((cls, sub)) if cls != "00" else None,
            "protocol": ids.protocols.get((cls, sub, proto)) if cls != "00" else None,
            "description": desc,
        })
    return out


def _links(dev_root: str, folder: str) -> dict[str, str]:
    """``{real device path: link path}`` for the symlinks in DEV/folder."""
    base = os.path.join(dev_root, folder)
    out: dict[str, str] = {}
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for name in names:
        link = os.path.join(base, name)
        target = os.path.realpath(link)
        # the device name resolved relative to dev_root (fake trees point inside it)
        out.setdefault(os.path.basename(target), link)
    return out


def _usb_location(device_path: str) -> str | None:
    """``bus:dev`` of the USB device that ``device_path`` (a sysfs path) is under."""
    path = device_path
    while path and path != "/":
        bus = read_text(os.path.join(path, "busnum"))
        dev = read_text(os.path.join(path, "devnum"))
        if bus and dev:
            return f"{int(bus)}:{int(dev)}"
        path = os.path.dirname(path)
    return None


def serial_devices(sys_root: str = "/sys", dev_root: str = "/dev") -> list[dict[str, Any]]:
    """``serial_devices``: hardware UARTs and USB serial devices (ttyACM,
    ttyUSB ...) that have a backing device in sysfs."""
    base = os.path.join(sys_root, "class", "tty")
    by_id = _links(dev_root, "serial/by-id")
    by_path = _links(dev_root, "serial/by-path")
    out = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    for name in names:
        node = os.path.join(base, name)
        dev_link = os.path.join(node, "device")
        if not os.path.exists(dev_link):
            continue
        device = os.path.realpath(dev_link)
        driver = os.path.basename(os.path.realpath(os.path.join(device, "driver"))) \
            if os.path.exists(os.path.join(device, "driver")) else ""
        is_usb = "/usb" in device
        if not is_usb:
            # 8250 placeholders without a real UART report type 0 (unknown)
            if read_text(os.path.join(node, "type"), "1") == "0":
                continue
        out.append({
            "device_type": "usb" if is_usb else "hardware_uart",
            "device_path": os.path.join(dev_root, name),
            "device_name": name,
            "driver_name": driver,
            "path_by_hardware": by_path.get(name),
            "path_by_id": by_id.get(name),
            "usb_location": _usb_location(device) if is_usb else None,
        })
    return out


# -- V4L2 -----------------------------------------------------------------
VIDIOC_QUERYCAP = 0x80685600          # _IOR('V', 0, struct v4l2_capability), 104 bytes
V4L2_CAP_DEVICE_CAPS = 0x80000000
V4L2_CAPS = {
    0x00000001: "VIDEO_CAPTURE", 0x00000002: "VIDEO_OUTPUT", 0x00000004: "VIDEO_OVERLAY",
    0x00000010: "VBI_CAPTURE", 0x00000020: "VBI_OUTPUT", 0x00000040: "SLICED_VBI_CAPTURE",
    0x00000080: "SLICED_VBI_OUTPUT", 0x00000100: "RDS_CAPTURE",
    0x00000200: "VIDEO_OUTPUT_OVERLAY", 0x00000400: "HW_FREQ_SEEK", 0x00000800: "RDS_OUTPUT",
    0x00001000: "VIDEO_CAPTURE_MPLANE", 0x00002000: "VIDEO_OUTPUT_MPLANE",
    0x00004000: "VIDEO_M2M_MPLANE", 0x00008000: "VIDEO_M2M", 0x00010000: "TUNER",
    0x00020000: "AUDIO", 0x00040000: "RADIO", 0x00080000: "MODULATOR",
    0x00100000: "SDR_CAPTURE", 0x00200000: "EXT_PIX_FORMAT", 0x00400000: "SDR_OUTPUT",
    0x00800000: "META_CAPTURE", 0x01000000: "READWRITE", 0x02000000: "ASYNCIO",
    0x04000000: "STREAMING", 0x08000000: "META_OUTPUT", 0x10000000: "TOUCH",
    0x20000000: "IO_MC",
}


def _cstr(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode(errors="replace")


def v4l2_querycap(path: str) -> dict[str, Any] | None:
    """VIDIOC_QUERYCAP of the device node ``path``; None when it cannot be queried."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buf = bytearray(104)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    driver, card, bus = (_cstr(bytes(buf[0:16])), _cstr(bytes(buf[16:48])),
                         _cstr(bytes(buf[48:80])))
    version, caps, device_caps = struct.unpack_from("<III", buf, 80)
    if caps & V4L2_CAP_DEVICE_CAPS:
        caps = device_caps
    return {"driver": driver, "card": card, "bus_info": bus,
            "version": f"{(version >> 16) & 0xFF}.{(version >> 8) & 0xFF}.{version & 0xFF}",
            "caps": caps}


def v4l2_devices(sys_root: str = "/sys", dev_root: str = "/dev") -> list[dict[str, Any]]:
    """``v4l2_devices``: V4L2 nodes that can capture video."""
    base = os.path.join(sys_root, "class", "video4linux")
    by_id = _links(dev_root, "v4l/by-id")
    by_path = _links(dev_root, "v4l/by-path")
    out = []
    try:
        names = sorted(os.listdir(base), key=lambda n: (len(n), n))
    except OSError:
        return []
    for name in names:
        cap = v4l2_querycap(os.path.join(dev_root, name))
        if cap is None or not cap["caps"] & 0x1:   # VIDEO_CAPTURE
            continue
        device = os.path.realpath(os.path.join(base, name, "device"))
        out.append({
            "device_name": name,
            "device_path": os.path.join(dev_root, name),
            "camera_name": cap["card"],
            "driver_name": cap["driver"],
            "hardware_bus": cap["bus_info"],
            "capabilities": [n for bit, n in V4L2_CAPS.items() if cap["caps"] & bit],
            "version": cap["version"],
            "path_by_hardware": by_path.get(name),
            "path_by_id": by_id.get(name),
            "alt_name": _attr(os.path.join(base, name), "name"),
            "usb_location": _usb_location(device) if "/usb" in device else None,
        })
    return out


def libcamera_devices() -> list[dict[str, Any]]:
    """``libcamera_devices`` through the python3-libcamera binding, when importable."""
    try:
        import libcamera  # type: ignore
    except Exception:
        return []
    out = []
    try:
        mgr = libcamera.CameraManager.singleton()
        for cam in mgr.cameras:
            model = cam.properties.get(libcamera.properties.Model, cam.id) \
                if hasattr(libcamera, "properties") else cam.id
            modes = []
            try:
                cam.acquire()
                config = cam.generate_configuration([libcamera.StreamRole.Raw])
                formats = config.at(0).formats
                for fmt in formats.pixel_formats:
                    modes.append({"format": str(fmt),
                                  "resolutions": [f"{s.width}x{s.height}"
                                                  for s in formats.sizes(fmt)]})
            except Exception:
                pass
            finally:
                try:
                    cam.release()
                except Exception:
                    pass
            out.append({"libcamera_id": cam.id, "model": str(model), "modes": modes})
    except Exception:
        return out
    return out


# -- CAN --------------------------------------------------------------------
CANBUS_ID_ADMIN = 0x3F0
CANBUS_ID_ADMIN_RESP = 0x3F1
CMD_QUERY_UNASSIGNED = 0x00
RESP_NEED_NODEID = 0x20
APPLICATIONS = {0x01: "Klipper", 0x11: "Katapult"}
_CAN_FRAME = struct.Struct("<IB3x8s")


def query_can_uuids(interface: str, timeout: float = 2.0,
                    sys_root: str = "/sys") -> list[dict[str, str]]:
    """Ask the unassigned Klipper/Katapult nodes on SocketCAN ``interface``
    for their UUIDs (admin id 0x3f0, answers on 0x3f1); collects answers for
    ``timeout`` seconds.

    Raises: ApiError 400 when the interface does not exist, 503 when the
    host has no SocketCAN support or the interface is down.
    """
    if not interface or "/" in interface or interface.startswith("."):
        raise ApiError(f"Invalid CAN interface '{interface}'", 400)
    if not os.path.exists(os.path.join(sys_root, "class", "net", interface)):
        raise ApiError(f"CAN interface '{interface}' does not exist", 400)
    try:
        sock = socket.socket(socket.PF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    except (OSError, AttributeError) as err:
        raise ApiError(f"SocketCAN is not available on this host: {err}", 503) from None
    found: dict[str, str] = {}
    try:
        try:
            sock.bind((interface,))
            sock.send(_CAN_FRAME.pack(CANBUS_ID_ADMIN, 1,
                                      bytes([CMD_QUERY_UNASSIGNED]).ljust(8, b"\x00")))
        except OSError as err:
            raise ApiError(f"Unable to query CAN interface '{interface}': {err}", 503) from None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                frame = sock.recv(16)
            except (socket.timeout, TimeoutError):
                break
            except OSError as err:
                raise ApiError(f"CAN read on '{interface}' failed: {err}", 503) from None
            if len(frame) < 16:
                continue
            can_id, dlc, data = _CAN_FRAME.unpack(frame)
            if (can_id & 0x1FFFFFFF) != CANBUS_ID_ADMIN_RESP or dlc < 7:
                continue
            if data[0] != RESP_NEED_NODEID:
                continue
            uuid = data[1:7].hex()
            app = APPLICATIONS.get(data[7], "Klipper") if dlc >= 8 else "Klipper"
            found.setdefault(uuid, app)
    finally:
        sock.close()
    return [{"uuid": u, "application": a} for u, a in found.items()]
