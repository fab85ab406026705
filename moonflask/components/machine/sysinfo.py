"""Host facts for ``machine.system_info``: CPU, SD card, distribution,
virtualization, Python, network interfaces and CAN interfaces.

Everything here reads small files under /proc and /sys, or runs one short
command (``systemd-detect-virt``, ``ip -json``) through gevent's cooperative
subprocess.  Spec: web_api.md "Get System Info".
"""
from __future__ import annotations

import ipaddress
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from typing import Any

import distro

# SD card manufacturer ids (the mmc "manfid" sysfs value), as commonly reported.
SD_MANUFACTURERS = {
    "000001": "Panasonic", "000002": "Toshiba", "000003": "Sandisk",
    "00001b": "Samsung", "00001d": "AData", "000027": "Phison",
    "000028": "Lexar", "000031": "Silicon Power", "000041": "Kingston",
    "000074": "Transcend", "000076": "Patriot", "000082": "Sony",
    "00009c": "Angelbird", "00009f": "Hama",
}


def read_text(path: str, default: str = "") -> str:
    """A small sysfs/procfs file as stripped text (NULs removed), or ``default``."""
    try:
        with open(path, "rb") as fh:
            return fh.read(65536).replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return default


def run_cmd(args: list[str], timeout: float = 5.0, input: bytes | None = None
            ) -> tuple[int, str, str]:
    """Run a command cooperatively (gevent's subprocess).

    Returns: ``(returncode, stdout, stderr)``; returncode -1 when the program
    is missing or timed out (stderr says why).
    """
    try:
        proc = subprocess.run(args, input=input, capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        return -1, "", f"{args[0]}: command not found"
    except subprocess.TimeoutExpired:
        return -1, "", f"{args[0]}: timed out after {timeout} s"
    except OSError as err:
        return -1, "", str(err)
    return proc.returncode, proc.stdout.decode(errors="replace"), \
        proc.stderr.decode(errors="replace")


def cpu_info() -> dict[str, Any]:
    """``cpu_info``: cpu_count, bits, processor, cpu_desc, serial_number,
    hardware_desc, model, total_memory, memory_units (kB)."""
    desc = serial = hardware = model = ""
    for line in read_text("/proc/cpuinfo").splitlines():
        key, sep, val = line.partition(":")
        if not sep:
            continue
        key, val = key.strip().lower(), val.strip()
        if key in ("model name", "cpu model") and not desc:
            desc = val
        elif key == "processor" and not desc and not val.isdigit():
            desc = val
        elif key == "serial" and not serial:
            serial = val
        elif key == "hardware" and not hardware:
            hardware = val
        elif key == "model" and not model and not val.isdigit():
            model = val
    if not model:
        model = read_text("/proc/device-tree/model")
    if not serial:
        serial = read_text("/proc/device-tree/serial-number")
    total = 0
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1])
            break
    return {
        "cpu_count": os.cpu_count(),
        "bits": platform.architecture()[0],
        "processor": platform.machine(),
        "cpu_desc": desc,
        "serial_number": serial,
        "hardware_desc": hardware,
        "model": model,
        "total_memory": total,
        "memory_units": "kB",
    }


def _format_capacity(total: int) -> str:
    size = float(total)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def sd_info(sys_root: str = "/sys") -> dict[str, Any]:
    """``sd_info`` from the first mmc block device's sysfs node
    (``/sys/block/mmcblk0/device``); ``{}`` when there is none."""
    block = os.path.join(sys_root, "block", "mmcblk0")
    dev = os.path.join(block, "device")
    if not os.path.isdir(dev):
        return {}
    manfid = read_text(os.path.join(dev, "manfid")).lower()
    manf_key = manfid[2:] if manfid.startswith("0x") else manfid
    oemid = read_text(os.path.join(dev, "oemid"))
    oem = oemid[2:] if oemid.startswith("0x") else oemid
    serial = read_text(os.path.join(dev, "serial"))
    serial = serial[2:] if serial.startswith("0x") else serial
    date = read_text(os.path.join(dev, "date"))
    month, _, year = date.partition("/")
    try:
        sectors = int(read_text(os.path.join(block, "size"), "0"))
    except ValueError:
        sectors = 0
    total = sectors * 512
    return {
        "manufacturer_id": manf_key[-2:] if manf_key else "",
        "manufacturer": SD_MANUFACTURERS.get(manf_key.zfill(6), "Unknown"),
        "oem_id": oem,
        "product_name": read_text(os.path.join(dev, "name")),
        "product_revision": _revision(read_text(os.path.join(dev, "prv"))
                                      or read_text(os.path.join(dev, "hwrev"))),
        "serial_number": serial,
        "manufacturer_date": f"{int(month)}/{year}" if month.isdigit() else date,
        "capacity": _format_capacity(total),
        "total_bytes": total,
    }


def _revision(raw: str) -> str:
    if raw.startswith("0x"):
        try:
            val = int(raw, 16)
            return f"{val >> 4}.{val & 0xF}"
        except ValueError:
            return raw
    return raw


def distribution() -> dict[str, Any]:
    """``distribution`` from ``distro`` (os-release), plus release_info and
    the kernel version."""
    info = dict(distro.info())
    return {
        "name": distro.name(pretty=True),
        "id": info.get("id", ""),
        "version": info.get("version", ""),
        "version_parts": info.get("version_parts", {}),
        "like": info.get("like", ""),
        "codename": info.get("codename", ""),
        "release_info": distro.distro_release_info(),
        "kernel_version": platform.release(),
    }


def virtualization() -> dict[str, str]:
    """``{"virt_type": "none"|"container"|"vm", "virt_identifier": str}`` from
    ``systemd-detect-virt``, or from /proc hints when it is missing."""
    if shutil.which("systemd-detect-virt"):
        for flag, kind in (("--container", "container"), ("--vm", "vm")):
            rc, out, _ = run_cmd(["systemd-detect-virt", flag])
            ident = out.strip()
            if rc == 0 and ident and ident != "none":
                return {"virt_type": kind, "virt_identifier": ident}
        return {"virt_type": "none", "virt_identifier": "none"}
    if os.path.exists("/.dockerenv"):
        return {"virt_type": "container", "virt_identifier": "docker"}
    if os.path.exists("/run/.containerenv"):
        return {"virt_type": "container", "virt_identifier": "podman"}
    env = read_text("/proc/1/environ")
    for item in env.split("\x00") if "\x00" in env else env.split():
        if item.startswith("container="):
            return {"virt_type": "container", "virt_identifier": item[10:] or "unknown"}
    if " hypervisor" in read_text("/proc/cpuinfo"):
        return {"virt_type": "vm", "virt_identifier": "unknown"}
    return {"virt_type": "none", "virt_identifier": "none"}


def python_info() -> dict[str, Any]:
    """``python``: version tuple and version string."""
    return {"version": list(sys.version_info), "version_string": sys.version.replace("\n", " ")}


def _ip_json(args: list[str]) -> list[dict[str, Any]] | None:
    if not shutil.which("ip"):
        return None
    rc, out, _ = run_cmd(["ip", "-json", *args])
    if rc != 0:
        return None
    try:
        data = json.loads(out)
    except ValueError:
        return None
    return data if isinstance(data, list) else None


def network_info(sys_root: str = "/sys") -> dict[str, Any]:
    """``network``: every non-loopback interface with an address:
    ``{iface: {"mac_address", "ip_addresses": [{"family", "address",
    "is_link_local"}]}}``."""
    out: dict[str, Any] = {}
    data = _ip_json(["address", "show"])
    if data is not None:
        for link in data:
            name = link.get("ifname")
            if not name or link.get("link_type") == "loopback":
                continue
            addrs = []
            for a in link.get("addr_info", []):
                fam = a.get("family")
                if fam not in ("inet", "inet6"):
                    continue
                addrs.append(_addr_entry("ipv4" if fam == "inet" else "ipv6", a.get("local", "")))
            if addrs:
                out[name] = {"mac_address": link.get("address", ""), "ip_addresses": addrs}
        return out
    # Fallback without iproute2: /proc/net/if_inet6 and the primary IPv4 via ioctl.
    v6: dict[str, list[str]] = {}
    for line in read_text("/proc/net/if_inet6").splitlines():
        parts = line.split()
        if len(parts) >= 6:
            raw = parts[0]
            v6.setdefault(parts[5], []).append(
                str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    for _idx, name in socket.if_nameindex():
        if name == "lo":
            continue
        addrs = []
        v4 = _ipv4_of(name)
        if v4:
            addrs.append(_addr_entry("ipv4", v4))
        addrs += [_addr_entry("ipv6", a) for a in v6.get(name, [])]
        if addrs:
            out[name] = {"mac_address": read_text(f"{sys_root}/class/net/{name}/address"),
                         "ip_addresses": addrs}
    return out


def _addr_entry(family: str, address: str) -> dict[str, Any]:
    try:
        link_local = ipaddress.ip_address(address).is_link_local
    except ValueError:
        link_local = False
    return {"family": family, "address": address, "is_link_local": link_local}


def _ipv4_of(name: str) -> str | None:
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), 0x8915,  # SIOCGIFADDR
                              struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(res[20:24])


ARPHRD_CAN = 280


def canbus_info(sys_root: str = "/sys") -> dict[str, Any]:
    """``canbus``: ``{iface: {"tx_queue_len", "bitrate", "driver"}}`` for every
    SocketCAN interface (sysfs ``type`` 280); bitrate from ``ip -details``."""
    out: dict[str, Any] = {}
    net = os.path.join(sys_root, "class", "net")
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return out
    for name in names:
        if read_text(os.path.join(net, name, "type")) != str(ARPHRD_CAN):
            continue
        try:
            qlen: int | None = int(read_text(os.path.join(net, name, "tx_queue_len")))
        except ValueError:
            qlen = None
        driver_link = os.path.join(net, name, "device", "driver")
        driver = os.path.basename(os.path.realpath(driver_link)) \
            if os.path.exists(driver_link) else None
        bitrate = None
        data = _ip_json(["-details", "link", "show", name])
        if data:
            bt = data[0].get("linkinfo", {}).get("info_data", {}).get("bittiming", {})
            bitrate = bt.get("bitrate")
        out[name] = {"tx_queue_len": qlen, "bitrate": bitrate, "driver": driver}
    return out
