"""Discovery clients for tests and capture scripts: a python-zeroconf
browser for ``_moonraker._tcp.local.``, an SSDP M-SEARCH and a listener
for SSDP NOTIFY messages on 239.255.255.250:1900."""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

SERVICE_TYPE = "_moonraker._tcp.local."
SSDP_ADDR = ("239.255.255.250", 1900)


def multicast_interfaces() -> list[str]:
    """Names of the interfaces that are up and multicast-capable
    (``/sys/class/net/*/flags``: IFF_UP 0x1, IFF_MULTICAST 0x1000)."""
    import os
    out = []
    for name in sorted(os.listdir("/sys/class/net")):
        try:
            with open(f"/sys/class/net/{name}/flags") as fh:
                flags = int(fh.read(), 16)
        except (OSError, ValueError):
            continue
        if flags & 0x1 and flags & 0x1000:
            out.append(name)
    return out


class Browser:
    """A python-zeroconf browser of ``_moonraker._tcp.local.`` running in the
    background: ``services`` (name -> ``{"name", "server", "port",
    "addresses", "properties"}``, properties decoded, None kept) and
    ``removed`` (names whose goodbye arrived)."""

    def __init__(self) -> None:
        from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf
        self.services: dict[str, dict[str, Any]] = {}
        self.removed: list[str] = []
        self.lock = threading.Lock()
        browser = self

        class Listener(ServiceListener):
            def _get(self, zc: Any, type_: str, name: str) -> None:
                info = zc.get_service_info(type_, name, 3000)
                if info is None:
                    return
                props = {k.decode(): (v.decode() if v is not None else None)
                         for k, v in info.properties.items()}
                with browser.lock:
                    browser.services[name] = {
                        "name": name, "server": info.server, "port": info.port,
                        "addresses": sorted(info.parsed_addresses()), "properties": props}

            add_service = update_service = _get

            def remove_service(self, zc: Any, type_: str, name: str) -> None:
                with browser.lock:
                    browser.services.pop(name, None)
                    browser.removed.append(name)

        self.zc = Zeroconf(ip_version=IPVersion.All)
        self.browser = ServiceBrowser(self.zc, SERVICE_TYPE, Listener())

    def snapshot(self) -> list[dict[str, Any]]:
        """The services found so far."""
        with self.lock:
            return list(self.services.values())

    def wait(self, want: Any, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``want(snapshot)`` is true or ``timeout``; the snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            services = self.snapshot()
            if want(services) or time.monotonic() > deadline:
                return services
            time.sleep(0.1)

    def close(self) -> None:
        """Stop browsing."""
        self.zc.close()


def browse(timeout: float = 10.0, want: Any = None) -> list[dict[str, Any]]:
    """Browse with a new :class:`Browser` until ``want(services)`` is true
    (default: one found) or ``timeout``; returns the services found."""
    browser = Browser()
    try:
        return browser.wait(want or bool, timeout)
    finally:
        browser.close()


def parse_ssdp(data: bytes) -> dict[str, Any]:
    """An SSDP message as ``{"start": first line, "headers": {NAME: value}}``."""
    lines = data.decode("utf-8", "replace").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().upper()] = v.strip()
    return {"start": lines[0], "headers": headers}


def msearch(st: str, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Send one M-SEARCH for ``st``; the parsed unicast replies within ``timeout``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    s.settimeout(0.2)
    msg = ("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
           f"MAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {st}\r\n\r\n").encode()
    s.sendto(msg, SSDP_ADDR)
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data, _addr = s.recvfrom(4096)
        except socket.timeout:
            continue
        out.append(parse_ssdp(data))
    s.close()
    return out


class NotifyListener:
    """Collect the SSDP NOTIFY messages multicast to 239.255.255.250:1900."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind(("", SSDP_ADDR[1]))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack(
            "4s4s", socket.inet_aton(SSDP_ADDR[0]), socket.inet_aton("0.0.0.0")))
        self.sock.settimeout(0.5)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, _ = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            msg = parse_ssdp(data)
            if msg["start"].startswith("NOTIFY"):
                self.messages.append(msg)

    def close(self) -> None:
        """Stop listening."""
        self._stop = True
        self.thread.join(2)
        self.sock.close()
