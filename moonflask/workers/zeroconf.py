"""Discovery workers: the mDNS registration and the SSDP responder.

``run_mdns`` registers the service with python-zeroconf (imported here,
when the worker starts: idle memory), then re-reads the addresses every
``ADDRESS_POLL`` seconds and updates the record when they changed.
``run_ssdp`` listens on 239.255.255.250:1900, answers ``M-SEARCH`` and
multicasts ``NOTIFY ssdp:alive``.  What they announce comes from
:class:`moonflask.components.zeroconf.ZeroconfComponent`, which also
withdraws both at shutdown.
"""
from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Any

import gevent

log = logging.getLogger(__name__)

ALIVE_REPEAT = 2.0      # seconds between the two alive rounds at start (UDP may drop one)


def _service_info(comp: Any, addresses: list[str]) -> Any:
    from zeroconf import ServiceInfo
    from ..components.zeroconf import SERVICE_TYPE
    return ServiceInfo(SERVICE_TYPE, comp.service_name, port=comp.server.port,
                       addresses=[socket.inet_aton(a) for a in addresses],
                       properties=comp.txt_properties(),
                       server=f"{comp.mdns_hostname}.local.")


def run_mdns(comp: Any) -> None:
    """Register and keep the mDNS record current (never returns).

    Args:
        comp: the :class:`moonflask.components.zeroconf.ZeroconfComponent`.
    """
    from zeroconf import InterfaceChoice, IPVersion, Zeroconf
    from ..components.zeroconf import ADDRESS_POLL
    addresses = comp.addresses()
    zc = Zeroconf(interfaces=comp.interfaces() or InterfaceChoice.All,
                  ip_version=IPVersion.V4Only)
    try:
        info = _service_info(comp, addresses)
        zc.register_service(info, allow_name_change=True)
        comp.mdns = (zc, info)
        log.info("mDNS: registered %s on %s", info.name, ", ".join(addresses))
        while True:
            gevent.sleep(ADDRESS_POLL)
            current = comp.addresses()
            if current != addresses:
                addresses = current
                info = _service_info(comp, addresses)
                zc.update_service(info)
                comp.mdns = (zc, info)
                log.info("mDNS: addresses changed to %s", ", ".join(addresses))
    except BaseException:
        if comp.mdns is not None and comp.mdns[0] is zc:
            comp.mdns = None
            zc.close()
        raise


def _ssdp_socket(comp: Any) -> socket.socket:
    from ..components.zeroconf import SSDP_GROUP, SSDP_PORT
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    sock.bind(("", SSDP_PORT))
    ifaces = comp.interfaces() or ["0.0.0.0"]
    for iface in ifaces:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack(
            "4s4s", socket.inet_aton(SSDP_GROUP), socket.inet_aton(iface)))
    if ifaces != ["0.0.0.0"]:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaces[0]))
    return sock


def run_ssdp(comp: Any) -> None:
    """Answer M-SEARCH and send NOTIFY alive rounds (never returns)."""
    from ..components.zeroconf import SSDP_GROUP, SSDP_MAX_AGE, SSDP_PORT
    sock = _ssdp_socket(comp)
    comp.ssdp_sock = sock
    rounds = [time.monotonic(), time.monotonic() + ALIVE_REPEAT]
    try:
        while True:
            now = time.monotonic()
            if rounds and now >= rounds[0]:
                rounds.pop(0)
                for msg in comp.ssdp_notifications("ssdp:alive"):
                    sock.sendto(msg, (SSDP_GROUP, SSDP_PORT))
                if not rounds:
                    rounds.append(now + SSDP_MAX_AGE / 2)
            sock.settimeout(max(0.05, rounds[0] - time.monotonic()))
            try:
                data, addr = sock.recvfrom(4096)
            except socket.timeout:
                continue
            reply = comp.ssdp_search_reply(data)
            if reply is not None:
                sock.sendto(reply, addr)
    except BaseException:
        if comp.ssdp_sock is sock:
            comp.ssdp_sock = None
            sock.close()
        raise
