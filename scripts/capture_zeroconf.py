#!/usr/bin/env python3
"""Record the reference Moonraker 0.11.0's ``[zeroconf]`` announcements
(mDNS service, SSDP replies, NOTIFY messages, the SSDP description XML)
into tests/reference/zeroconf_*.json.  Needs a multicast-capable interface.

    .venv/bin/python scripts/capture_zeroconf.py \
        [--reference-python .reference-venv/bin/python] [--out tests/reference] [--keep]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import capture_reference as cr  # noqa: E402
import sim_printer  # noqa: E402
import zeroconf_probe as zp  # noqa: E402

CONF = """\
[server]
host: {host}
port: {port}
klippy_uds_address: {sock}

[authorization]
trusted_clients:
  127.0.0.0/8

[zeroconf]
{zeroconf}
"""


def one_run(args, tmp, sim, name, host, zeroconf, ssdp):
    data = os.path.join(tmp, name)
    for d in ("config", "gcodes", "logs"):
        os.makedirs(os.path.join(data, d), exist_ok=True)
    port = cr.free_port()
    conf = os.path.join(data, "config", "moonraker.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(host=host, port=port, sock=sim.socket_path, zeroconf=zeroconf))
    notify = zp.NotifyListener() if ssdp else None
    out = open(os.path.join(tmp, name + ".out"), "wb")
    mr = subprocess.Popen([args.reference_python, "-m", "moonraker", "-d", data, "-c", conf,
                           "-l", os.path.join(data, "logs", "moonraker.log")],
                          stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          start_new_session=True)
    out.close()
    try:
        cap = cr.Capture(args.out, port, sim)
        cr.wait_moonraker(cap)
        url = f"http://127.0.0.1:{port}"
        services = zp.browse(15)
        cap.save(f"zeroconf_{name}_mdns", "mdns", {"host": host, "zeroconf": zeroconf,
                                                  "port": port}, None, services)
        cfg = requests.get(url + "/server/config").json()["result"]["config"]["zeroconf"]
        cap.save(f"zeroconf_{name}_config", "http", {"path": "/server/config"}, 200, cfg)
        resp = requests.get(url + "/server/zeroconf/ssdp")
        cap.save(f"zeroconf_{name}_ssdp_xml", "http", {"path": "/server/zeroconf/ssdp"},
                 resp.status_code, {"raw": resp.text},
                 content_type=resp.headers.get("Content-Type"))
        if ssdp:
            for st in ("ssdp:all", "upnp:rootdevice", "urn:arksine.github.io:device:Moonraker:1",
                       "urn:foo:device:bar:1"):
                cap.save(f"zeroconf_{name}_msearch_{st.replace(':', '_')}", "ssdp",
                         {"st": st}, None, zp.msearch(st))
        mr.send_signal(signal.SIGTERM)
        mr.wait(15)
        if notify is not None:
            time.sleep(1)
            cap.save(f"zeroconf_{name}_notify", "ssdp", None, None, notify.messages)
    finally:
        if notify is not None:
            notify.close()
        if mr.poll() is None:
            mr.kill()


def run(args):
    tmp = tempfile.mkdtemp(prefix="mfzcref-", dir="/tmp")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(tmp, "gcodes"))
    try:
        sim_printer.wait_ready(sim.socket_path, 60, sim)
        one_run(args, tmp, sim, "loopback", "127.0.0.1", "enable_ssdp: True", True)
        one_run(args, tmp, sim, "all", "0.0.0.0", "mdns_hostname: my-printer", False)
    finally:
        sim_printer.stop(sim)
        cr.finish_tmp(tmp, args.keep)


def main():
    ap = argparse.ArgumentParser()
    cr.reference_arguments(ap, klippy=False)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
