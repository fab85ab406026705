"""Zeroconf (mDNS) and SSDP discovery (``[zeroconf]``).  Spec:
configuration.md "[zeroconf]"; the announcements' contents are those of the
reference Moonraker 0.11.0 (observed with a python-zeroconf browser, an
SSDP M-SEARCH and a NOTIFY listener: tests/reference/zeroconf_*.json).

Options: ``mdns_hostname`` (default: the system's host name),
``enable_ssdp`` (default False).

mDNS (worker ``zeroconf``, :func:`moonflask.workers.zeroconf.run_mdns`):
the service ``Moonraker-<first 8 hex digits of the instance id> @
<mdns_hostname>._moonraker._tcp.local.`` on host ``<mdns_hostname>.local.``
and the HTTP port, TXT ``uuid`` (the instance id), ``https_port`` (none:
moonflask serves no TLS), ``version`` (``0.11.0``), ``route_prefix``.  Its
addresses: ``[server] host`` when it names one address, else every IPv4
address of the machine except loopback (what the reference announces);
re-read every ``ADDRESS_POLL`` seconds and the record updated when they
change.  Multicast goes out on every interface, or only on the one holding
``[server] host`` when that is a non-loopback address.

SSDP (``enable_ssdp``, worker ``ssdp``,
:func:`moonflask.workers.zeroconf.run_ssdp`): ``NOTIFY ssdp:alive`` for
``upnp:rootdevice``, ``uuid:<UDN>`` and the device type at start (twice)
and every ``max-age / 2``; ``ssdp:byebye`` at shutdown; an ``M-SEARCH`` for
``ssdp:all`` or ``upnp:rootdevice`` is answered with the ``upnp:rootdevice``
record; the description XML is served at ``/server/zeroconf/ssdp``.

The instance id is the database's ``moonraker`` ``instance_id`` (a uuid4 in
hex, Moonraker's key), created when missing.  python-zeroconf is imported by
the worker only, when it starts.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import time
import uuid
from email.utils import formatdate
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_moonraker._tcp.local."
API_RELEASE = "0.11.0"        # TXT version / modelNumber: the Moonraker API served
ADDRESS_POLL = 10.0           # seconds between checks for changed addresses
SSDP_GROUP = "239.255.255.250"
SSDP_PORT = 1900
SSDP_MAX_AGE = 1800           # seconds (CACHE-CONTROL)
DEVICE_TYPE = "urn:arksine.github.io:device:Moonraker:1"
SSDP_SERVER = "Moonraker SSDP/UPNP Server"
SSDP_SEARCH_TARGETS = ("ssdp:all", "upnp:rootdevice")

DESCRIPTION_XML = """<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1">
    <specVersion>
        <major>2</major>
        <minor>0</minor>
    </specVersion>
    <device>
        <deviceType>{device_type}</deviceType>
        <friendlyName>{friendly_name}</friendlyName>
        <manufacturer>Arksine</manufacturer>
        <manufacturerURL>https://github.com/Arksine/moonraker</manufacturerURL>
        <modelDescription>API Server for Klipper</modelDescription>
        <modelName>Moonraker</modelName>
        <modelNumber>{version}</modelNumber>
        <modelURL>https://github.com/Arksine/moonraker</modelURL>
        <serialNumber>{serial}</serialNumber>
        <UDN>uuid:{udn}</UDN>
        <presentationURL>{presentation_url}</presentationURL>
    </device>
</root>
"""


def _xml_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def machine_ipv4_addresses() -> list[str]:
    """Every IPv4 address of the machine's interfaces except loopback, in
    interface order (ifaddr, installed with python-zeroconf)."""
    import ifaddr
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                if ip.ip not in out:
                    out.append(ip.ip)
    return out


class ZeroconfComponent:
    """The ``zeroconf`` component.

    Args:
        server: the :class:`moonflask.app.Server` (needs ``database``).
        config: the ``[zeroconf]`` section.
    """

    def __init__(self, server: Any, config: Any) -> None:
        self.server = server
        self.mdns_hostname = config.get("mdns_hostname", socket.gethostname().split(".")[0])
        self.enable_ssdp = config.getboolean("enable_ssdp", False)
        meta = server.lookup_component("database").namespace("moonraker")
        instance_id = meta.get("instance_id", None)
        if not isinstance(instance_id, str) or len(instance_id) != 32:
            instance_id = uuid.uuid4().hex
            meta.insert("instance_id", instance_id)
        self.instance_id = instance_id
        self.boot_id = int(time.monotonic())
        self.mdns: Any = None          # (Zeroconf, ServiceInfo) while registered
        self.ssdp_sock: socket.socket | None = None
        self._workers: list[Any] = []
        server.events.on("server:started", self._start)
        server.events.on("server:shutdown", self._shutdown)

    # -- lifetime ---------------------------------------------------------
    def _start(self) -> None:
        from ..workers import zeroconf as worker
        self._workers.append(self.server.workers.start("zeroconf", worker.run_mdns, self))
        if self.enable_ssdp:
            self._workers.append(self.server.workers.start("ssdp", worker.run_ssdp, self))

    def _shutdown(self) -> None:
        """Withdraw the announcements (mDNS goodbye, SSDP byebye)."""
        for w in self._workers:
            w.stop()
        self._workers = []
        if self.ssdp_sock is not None:
            for msg in self.ssdp_notifications("ssdp:byebye"):
                try:
                    self.ssdp_sock.sendto(msg, (SSDP_GROUP, SSDP_PORT))
                except OSError:
                    break
            self.ssdp_sock.close()
            self.ssdp_sock = None
        if self.mdns is not None:
            zc, info = self.mdns
            self.mdns = None
            try:
                zc.unregister_service(info)
            finally:
                zc.close()

    # -- what is announced ------------------------------------------------
    @property
    def instance_name(self) -> str:
        """``Moonraker-<8 hex digits>``."""
        return f"Moonraker-{self.instance_id[:8]}"

    @property
    def service_name(self) -> str:
        """The mDNS service instance name."""
        return f"{self.instance_name} @ {self.mdns_hostname}.{SERVICE_TYPE}"

    def _fixed_host(self) -> str | None:
        host = self.server.host
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None
        if addr.is_unspecified or addr.version != 4:
            return None
        return host

    def addresses(self) -> list[str]:
        """The IPv4 addresses to announce (see the module docstring)."""
        fixed = self._fixed_host()
        if fixed is not None:
            return [fixed]
        return machine_ipv4_addresses() or ["127.0.0.1"]

    def interfaces(self) -> list[str] | None:
        """The interface addresses to multicast on; None: all of them."""
        fixed = self._fixed_host()
        if fixed is None or ipaddress.ip_address(fixed).is_loopback:
            return None
        return [fixed]

    def txt_properties(self) -> dict[str, str | None]:
        """The TXT record: ``uuid``, ``https_port``, ``version``, ``route_prefix``."""
        return {"uuid": self.instance_id, "https_port": None, "version": API_RELEASE,
                "route_prefix": self.server.route_prefix or None}

    def base_url(self) -> str:
        """``http://<first address>:<port>`` (SSDP presentationURL)."""
        return f"http://{self.addresses()[0]}:{self.server.port}"

    @property
    def udn(self) -> str:
        """The instance id as a dashed uuid."""
        return str(uuid.UUID(self.instance_id))

    def ssdp_description(self) -> str:
        """The UPnP device description XML served at /server/zeroconf/ssdp."""
        return DESCRIPTION_XML.format(
            device_type=DEVICE_TYPE,
            friendly_name=_xml_escape(f"{self.instance_name} ({self.mdns_hostname})"),
            version=API_RELEASE, serial=self.instance_id, udn=self.udn,
            presentation_url=_xml_escape(self.base_url()))

    def _ssdp_headers(self) -> list[str]:
        location = f"{self.base_url()}{self.server.route_prefix}/server/zeroconf/ssdp"
        return [f"LOCATION: {location}", "EXT:", f"SERVER: {SSDP_SERVER}",
                f"CACHE-CONTROL: max-age={SSDP_MAX_AGE}", f"BOOTID.UPNP.ORG: {self.boot_id}",
                "CONFIGID.UPNP.ORG: 1"]

    def ssdp_notifications(self, nts: str) -> list[bytes]:
        """The three ``NOTIFY`` messages (``ssdp:alive`` or ``ssdp:byebye``)."""
        out = []
        for nt, usn in (("upnp:rootdevice", f"uuid:{self.udn}::upnp:rootdevice"),
                        (f"uuid:{self.udn}", f"uuid:{self.udn}"),
                        (DEVICE_TYPE, f"uuid:{self.udn}::{DEVICE_TYPE}")):
            lines = ["NOTIFY * HTTP/1.1", f"HOST: {SSDP_GROUP}:{SSDP_PORT}", f"NTS: {nts}",
                     f"NT: {nt}", f"USN: {usn}"] + self._ssdp_headers()
            out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
        return out

    def ssdp_search_reply(self, request: bytes) -> bytes | None:
        """The unicast answer to an ``M-SEARCH`` datagram, or None when it is
        not one or searches for something else."""
        lines = request.decode("utf-8", "replace").split("\r\n")
        if not lines or not lines[0].upper().startswith("M-SEARCH"):
            return None
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().upper()] = value.strip()
        if headers.get("MAN", "").strip('"') != "ssdp:discover":
            return None
        if headers.get("ST") not in SSDP_SEARCH_TARGETS:
            return None
        lines = ["HTTP/1.1 200 OK", f"USN: uuid:{self.udn}::upnp:rootdevice"]
        headers_out = self._ssdp_headers()
        lines += headers_out[:1] + ["ST: upnp:rootdevice"] + headers_out[1:]
        lines.append(f"DATE: {formatdate(usegmt=True)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def load_component(server: Any, config: Any) -> ZeroconfComponent:
    """Build the ``zeroconf`` component from ``[zeroconf]``."""
    return ZeroconfComponent(server, config)


