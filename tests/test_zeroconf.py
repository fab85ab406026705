"""Issue 15: ``[zeroconf]`` mDNS and SSDP announcements, found by a real
python-zeroconf browser, SSDP M-SEARCH and a NOTIFY listener, compared with
the reference's (tests/reference/zeroconf_*.json, scripts/capture_zeroconf.py)."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
import requests

from helpers import REPO
from shapes import reference

sys.path.insert(0, os.path.join(REPO, "scripts"))
import zeroconf_probe as zp  # noqa: E402

if not zp.multicast_interfaces():
    pytest.skip("no network interface is up with multicast enabled (/sys/class/net/*/flags):"
                " mDNS and SSDP cannot be exchanged here", allow_module_level=True)

HOSTNAME = socket.gethostname().split(".")[0]


@pytest.fixture(scope="module")
def notify_listener():
    listener = zp.NotifyListener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def srv(start_server, notify_listener):
    return start_server(config="[zeroconf]\nenable_ssdp: True\n")


def instance_id(srv) -> str:
    return srv.result("GET", "/server/database/item?namespace=moonraker&key=instance_id")["value"]


def ours(services, port):
    return [s for s in services if s["port"] == port]


def test_mdns_service_found(srv):
    found = ours(zp.browse(20, lambda s: ours(s, srv.port)), srv.port)
    assert len(found) == 1, found
    svc = found[0]
    ref = reference("zeroconf_loopback_mdns")["body"][0]
    uid = instance_id(srv)
    assert re.fullmatch(r"[0-9a-f]{32}", uid)
    assert svc["name"] == f"Moonraker-{uid[:8]} @ {HOSTNAME}._moonraker._tcp.local."
    assert re.sub(r"-[0-9a-f]{8} ", "-X ", svc["name"]) == re.sub(
        r"-[0-9a-f]{8} ", "-X ", ref["name"]).replace("vm.", HOSTNAME + ".")
    assert svc["server"] == f"{HOSTNAME}.local."
    assert svc["addresses"] == ref["addresses"] == ["127.0.0.1"]
    assert svc["properties"] == dict(ref["properties"], uuid=uid)
    assert set(srv.result("GET", "/server/config")["config"]["zeroconf"]) >= set(
        reference("zeroconf_loopback_config")["body"])


def test_mdns_name_and_addresses_with_host_all(start_server, tmp_path_factory, printer):
    """``[server] host: 0.0.0.0``: every non-loopback IPv4 address is
    announced; a new address appears in the record, a removed one goes."""
    data = str(tmp_path_factory.mktemp("zc_all"))
    other = start_server(config="[zeroconf]\nmdns_hostname: my-printer\nenable_ssdp: True\n",
                         data_path=data, server_options="host: 0.0.0.0\n")
    try:
        ref = reference("zeroconf_all_mdns")["body"][0]
        svc = ours(zp.browse(20, lambda s: ours(s, other.port)), other.port)[0]
        assert svc["server"] == ref["server"] == "my-printer.local."
        assert svc["name"].endswith(" @ my-printer._moonraker._tcp.local.")
        base = svc["addresses"]
        assert base and "127.0.0.1" not in base
        # the description needs no credentials: fetched from an untrusted address
        resp = requests.get(f"http://{base[0]}:{other.port}/server/zeroconf/ssdp", timeout=10)
        assert resp.status_code == 200 and f"http://{base[0]}:{other.port}" in resp.text
        assert requests.get(f"http://{base[0]}:{other.port}/server/info",
                            timeout=10).status_code == 401
        extra = "10.254.254.1"
        if shutil.which("ip") is None:
            pytest.skip("iproute2's ip is not installed: cannot add an address")
        if subprocess.run(["ip", "addr", "add", f"{extra}/32", "dev", "lo"],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot add an address (ip addr add needs CAP_NET_ADMIN)")
        try:
            got = ours(zp.browse(40, lambda s: any(extra in x["addresses"]
                                                   for x in ours(s, other.port))), other.port)
            assert sorted(got[0]["addresses"]) == sorted(base + [extra])
        finally:
            subprocess.run(["ip", "addr", "del", f"{extra}/32", "dev", "lo"], check=True)
        # a removed address is not withdrawn from caches: a new browser
        # (a client looking later) must not see it any more
        deadline = time.monotonic() + 40
        while True:
            got = ours(zp.browse(5, lambda s: ours(s, other.port)), other.port)
            if (got and got[0]["addresses"] == base) or time.monotonic() > deadline:
                break
        assert got[0]["addresses"] == base
    finally:
        other.stop()


def test_ssdp_description_needs_enable_ssdp(start_server, tmp_path_factory, printer):
    ref = reference("zeroconf_all_ssdp_xml")
    data = str(tmp_path_factory.mktemp("zc_nossdp"))
    other = start_server(config="[zeroconf]\n", data_path=data)
    try:
        resp = other.get("/server/zeroconf/ssdp")
        assert resp.status_code == ref["status"] == 404
    finally:
        other.stop()


def _tags(elem: ET.Element) -> list:
    return [(child.tag, _tags(child)) for child in elem]


def test_ssdp_description(srv):
    resp = srv.get("/server/zeroconf/ssdp")
    ref = reference("zeroconf_loopback_ssdp_xml")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == ref["content_type"] == "application/xml"
    ours_xml, ref_xml = ET.fromstring(resp.text), ET.fromstring(ref["body"]["raw"])
    assert _tags(ours_xml) == _tags(ref_xml)
    ns = {"u": "urn:schemas-upnp-org:device-1-0"}
    dev, ref_dev = ours_xml.find("u:device", ns), ref_xml.find("u:device", ns)
    uid = instance_id(srv)
    for tag in ("deviceType", "manufacturer", "modelName", "modelNumber", "modelDescription"):
        assert dev.find(f"u:{tag}", ns).text == ref_dev.find(f"u:{tag}", ns).text
    assert dev.find("u:serialNumber", ns).text == uid
    assert dev.find("u:UDN", ns).text == f"uuid:{uid[:8]}-{uid[8:12]}-{uid[12:16]}-" \
                                         f"{uid[16:20]}-{uid[20:]}"
    assert dev.find("u:friendlyName", ns).text == f"Moonraker-{uid[:8]} ({HOSTNAME})"
    assert dev.find("u:presentationURL", ns).text == f"http://127.0.0.1:{srv.port}"


def _location_ours(msg, srv) -> bool:
    return msg["headers"].get("LOCATION") == (
        f"http://127.0.0.1:{srv.port}/server/zeroconf/ssdp")


def test_ssdp_msearch(srv):
    uid = instance_id(srv)
    for st in ("ssdp:all", "upnp:rootdevice"):
        ref = reference(f"zeroconf_loopback_msearch_{st.replace(':', '_')}")["body"][0]
        replies = [m for m in zp.msearch(st) if _location_ours(m, srv)]
        assert len(replies) == 1, (st, replies)
        got = replies[0]
        assert got["start"] == ref["start"]
        assert list(got["headers"]) == list(ref["headers"])
        for key in ("ST", "EXT", "SERVER", "CACHE-CONTROL", "CONFIGID.UPNP.ORG"):
            assert got["headers"][key] == ref["headers"][key], key
        assert got["headers"]["USN"] == f"uuid:{srv_udn(uid)}::upnp:rootdevice"
    for st in ("urn:arksine.github.io:device:Moonraker:1", "urn:foo:device:bar:1"):
        assert reference(f"zeroconf_loopback_msearch_{st.replace(':', '_')}")["body"] == []
        assert [m for m in zp.msearch(st, 1.5) if _location_ours(m, srv)] == []


def srv_udn(uid: str) -> str:
    return f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}"


def test_ssdp_notify_alive_and_byebye(srv, notify_listener):
    """Runs last: it stops the server to see the byebye messages and the
    mDNS goodbye."""
    udn = srv_udn(instance_id(srv))
    browser = zp.Browser()
    try:
        found = ours(browser.wait(lambda s: ours(s, srv.port), 20), srv.port)
        assert found
        _notify_alive_and_byebye(srv, notify_listener, udn)
        name = found[0]["name"]
        deadline = time.monotonic() + 10
        while name not in browser.removed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert name in browser.removed, "no mDNS goodbye at shutdown"
    finally:
        browser.close()


def _notify_alive_and_byebye(srv, notify_listener, udn: str) -> None:
    ref = reference("zeroconf_loopback_notify")["body"]

    def mine(nts):
        return [m for m in notify_listener.messages
                if udn in m["headers"].get("USN", "") and m["headers"]["NTS"] == nts]
    deadline = time.monotonic() + 10
    while len(mine("ssdp:alive")) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = mine("ssdp:alive")
    ref_alive = [m for m in ref if m["headers"]["NTS"] == "ssdp:alive"]
    assert [m["headers"]["NT"] for m in alive[:3]] == [
        m["headers"]["NT"].replace(ref_alive[1]["headers"]["NT"][5:], udn)
        for m in ref_alive[:3]]
    assert list(alive[0]["headers"]) == list(ref_alive[0]["headers"])
    assert len(alive) == 6   # two rounds at start
    srv.stop()
    deadline = time.monotonic() + 5
    while len(mine("ssdp:byebye")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    ref_bye = [m["headers"]["NT"] for m in ref if m["headers"]["NTS"] == "ssdp:byebye"]
    assert len(mine("ssdp:byebye")) == len(ref_bye) == 3
