"""Issue 10 item 16: trusted hostnames on a machine whose resolver is not
(yet) answering, as on a fresh or busy machine.

moonflask runs in a mount namespace of its own where /etc/hosts and
/etc/resolv.conf are files of the test (root only, skipped otherwise): no
``localhost`` line, a name server that refuses.  ``getaddrinfo`` then fails
with "Temporary failure in name resolution" at once.  Before the fix such a
failure was remembered for five minutes: a server trusting ``localhost``
refused 127.0.0.1 with 401 for that long (test_auth.py's
test_trusted_hostname_and_ipv6 timed out waiting for it to be ready).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers import Moonflask

WRAPPER = """#!/bin/sh
exec unshare -m sh -c 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf \\
  && shift && exec "$@"' {hosts} {resolv} {python} "$@"
"""


@pytest.fixture
def resolver(tmp_path, monkeypatch):
    """The hosts file moonflask sees (path); MOONFLASK_PYTHON set to run it
    in its own mount namespace."""
    if os.geteuid() != 0:
        pytest.skip("a mount namespace needs root")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 runsc-test\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    wrapper = tmp_path / "python-ns"
    wrapper.write_text(WRAPPER.format(hosts=hosts, resolv=resolv,
                                      python=os.environ.get("MOONFLASK_PYTHON", sys.executable)))
    wrapper.chmod(0o755)
    probe = subprocess.run([str(wrapper), "-c", "import socket; socket.getaddrinfo('localhost', 0)"],
                           capture_output=True, text=True, timeout=30)
    if "Temporary failure" not in probe.stderr and "not known" not in probe.stderr:
        pytest.skip(f"cannot isolate the resolver here: {probe.stderr.strip()[-200:]}")
    monkeypatch.setenv("MOONFLASK_PYTHON", str(wrapper))
    return hosts


def _server(tmp_path, trusted):
    data = tmp_path / "pd"
    (data / "gcodes").mkdir(parents=True, exist_ok=True)
    srv = Moonflask(str(data), str(tmp_path / "no-klippy.sock"),
                    config=f"\n[authorization]\ntrusted_clients:\n  {trusted}\n")
    return srv.start(timeout=60)


def test_localhost_is_loopback_without_resolving(resolver, tmp_path):
    """RFC 6761: ``localhost`` is the loopback, whatever the resolver says."""
    srv = _server(tmp_path, "localhost")
    try:
        assert srv.get("/server/info").status_code == 200
        assert srv.get("/server/info", headers={"X-Api-Key": ""}).status_code == 200
    finally:
        srv.stop()


def test_a_name_that_did_not_resolve_is_tried_again(resolver, tmp_path):
    srv = _server(tmp_path, "myprinter.lan")
    try:
        assert srv.get("/server/info").status_code == 401
        with open(resolver, "a") as fh:     # the same file: the bind mount sees it
            fh.write("127.0.0.1 myprinter.lan\n")
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            status = srv.get("/server/info").status_code
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200
    finally:
        srv.stop()
