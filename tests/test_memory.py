"""Memory of an idle server and after uploads (issue 11, item 2): the
upload path returns what it used, and its first use does not load modules
it never calls (streaming_form_data's smart_open/requests/aiofiles,
deferred by ``moonflask.app.defer_import``); an idle server does not load
ssl and the other modules ``moonflask.lean`` defers, and ssl's first use
is gevent's."""
from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from helpers import GCODE_MIB, stream_upload as upload  # noqa: E402


def rss_mib(pid: int) -> float:
    """VmRSS of process ``pid``, MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def settled_rss(pid: int, seconds: float = 20.0) -> float:
    """RSS once two readings 1 s apart agree within 0.2 MiB (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    last = rss_mib(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = rss_mib(pid)
        if abs(now - last) < 0.2:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def srv(start_server):
    # offline announcements (as bench/): the feed fetch would load requests at start
    return start_server(config="[announcements]\ndev_mode: True\n")


def test_rss_after_uploads_returns_near_idle(srv, printer_data):
    for _ in range(5):
        assert srv.get("/server/info").status_code == 200
    idle = settled_rss(srv.proc.pid)
    assert upload(srv.port, "mem_small.gcode", 0) == 201
    warm = settled_rss(srv.proc.pid)
    # the first upload loads what uploads use: the upload code (1.3 MiB) and
    # hashlib's OpenSSL (libcrypto, 3.4 MiB, which an idle server does not
    # load: moonflask.lean); before the deferred imports it also loaded
    # 5.9 MiB of smart_open/requests/aiofiles it never calls
    assert warm - idle < 6.0, (idle, warm)
    assert upload(srv.port, "mem_big.gcode", 64) == 201
    path = os.path.join(printer_data, "gcodes", "mem_big.gcode")
    assert os.path.getsize(path) == 64 * len(GCODE_MIB)
    after = settled_rss(srv.proc.pid)
    assert after - warm < 3.0, (idle, warm, after)
    os.unlink(path)


LAZY_SSL_SCRIPT = r'''
import sys
from moonflask import lean
lean.patch_gevent()
lean.defer_unused_imports()
import moonflask.app  # noqa: F401  everything an idle server imports at start
import ssl
loaded = {"ssl": "SSLContext" in vars(ssl),
          "asyncio": "get_event_loop" in vars(sys.modules["asyncio"]),
          "importlib.metadata": "version" in vars(sys.modules["importlib.metadata"]),
          "werkzeug.serving": "WSGIRequestHandler" in vars(sys.modules["werkzeug.serving"]),
          "hashlib": "sha224" in vars(sys.modules["hashlib"]),
          "requests": "requests" in sys.modules}
assert not any(loaded.values()), loaded
import socket
import gevent
CA, CERT, KEY, FIRST = sys.argv[1:5]
if FIRST == "gevent.ssl":  # gevent.ssl's import runs ssl (then patches it)
    import gevent.ssl
ticks = []
def ticker():
    while True:
        ticks.append(1)
        gevent.sleep(0.01)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
def serve():
    conn, _ = listener.accept()
    gevent.sleep(0.5)  # the client's handshake waits on this greenlet: the hub must run
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(CERT, KEY)
    tls = server_ctx.wrap_socket(conn, server_side=True)
    tls.sendall(tls.recv(100).upper())
    tls.close()
gevent.spawn(ticker)
server = gevent.spawn(serve)
ctx = ssl.create_default_context(cafile=CA)  # or this first use runs ssl, then patches it
import gevent.ssl
assert ssl.SSLContext is gevent.ssl.SSLContext and type(ctx) is gevent.ssl.SSLContext
before = len(ticks)
client = ctx.wrap_socket(socket.create_connection(listener.getsockname(), timeout=30),
                         server_hostname="127.0.0.1")
assert isinstance(client, gevent.ssl.SSLSocket)
assert len(ticks) - before >= 10, (before, len(ticks))  # other greenlets ran during the handshake
client.sendall(b"hello")
assert client.recv(100) == b"HELLO"
server.join(30)
print("ok")
'''


def test_ssl_loaded_on_first_use_and_cooperative(tmp_path):
    """``lean.patch_gevent``: an idle server's imports do not run ssl (nor
    asyncio, importlib.metadata, werkzeug's dev server, hashlib, requests); the first
    TLS use runs it patched by gevent: a handshake with a server greenlet of
    the same process completes while other greenlets keep running (whether
    ssl or gevent.ssl is used first)."""
    import subprocess
    import mqtt_broker
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    certs = mqtt_broker.make_certificates(str(tmp_path))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for first in ("ssl", "gevent.ssl"):
        proc = subprocess.run([sys.executable, "-c", LAZY_SSL_SCRIPT, certs["ca"], certs["cert"],
                               certs["key"], first], cwd=repo, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (first, proc.stderr)
