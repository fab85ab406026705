"""Hostile HTTP requests (request smuggling and malformed heads): what the
reference does with each, recorded into tests/reference/http_hostile.json.

Every probe is followed on the same connection by a pipelined
``GET /server/info?smuggled=1``: a server that answers it (two responses)
has read bytes of the hostile request as a second request.

    .venv/bin/python scripts/capture_http_hostile_reference.py \
        [--reference-python .reference-venv/bin/python]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import capture_reference as cr  # noqa: E402

SMUGGLED = b"GET /server/info?smuggled=1 HTTP/1.1\r\nHost: x\r\n\r\n"
GET = b"GET /server/info HTTP/1.1\r\nHost: x\r\n"


def _cases() -> dict[str, bytes]:
    n = len(SMUGGLED)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    return {
        # not hostile: two pipelined requests get two answers (the probe sees smuggling)
        "control_pipelined": GET + b"\r\n" + SMUGGLED,
        "duplicate_content_length": b"POST /server/info HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % n + SMUGGLED,
        "content_length_and_chunked": b"POST /server/info HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        "chunked_and_content_length": b"POST /server/info HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
        "content_length_not_a_number": b"POST /server/info HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: +5\r\n\r\nabcde" + SMUGGLED,
        # an endpoint that reads its body (a 405 may be answered before the body)
        "bad_chunk_size": b"POST /server/jsonrpc HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + SMUGGLED,
        "obsolete_line_folding": GET + b"X-Fold: a\r\n b\r\n\r\n" + SMUGGLED,
        "bare_lf": b"GET /server/info HTTP/1.1\nHost: x\n\n" + SMUGGLED,
        "nul_in_header_name": GET + b"X-A\x00b: c\r\n\r\n" + SMUGGLED,
        "control_byte_in_header_name": GET + b"X-A\x01b: c\r\n\r\n" + SMUGGLED,
        "space_before_colon": GET + b"X-A : c\r\n\r\n" + SMUGGLED,
        "nul_in_header_value": GET + b"X-A: b\x00c\r\n\r\n" + SMUGGLED,
        "bad_request_line": b"GET /server/info HTTP/1.1 extra\r\nHost: x\r\n\r\n" + SMUGGLED,
        "garbage_request_line": b"\x00\x01\x02 junk\r\n\r\n" + SMUGGLED,
        "oversized_request_line": b"GET /server/info?x=" + b"a" * 70000 + b" HTTP/1.1\r\n"
        b"Host: x\r\n\r\n" + SMUGGLED,
        "oversized_header_line": GET + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n" + SMUGGLED,
        "too_many_headers": GET + many + b"\r\n" + SMUGGLED,
    }


CASES = _cases()
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def probe(port: int, data: bytes, timeout: float = 10.0) -> dict:
    """Send ``data`` on a fresh connection and read until the server closes
    (or ``timeout`` seconds pass).  Returns ``{"statuses": [int, ...]
    (every response's status, in order), "closed": bool}``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    closed = False
    deadline = time.monotonic() + timeout
    try:
        s.sendall(data)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        s.close()
    return {"statuses": [int(m) for m in STATUS.findall(buf)], "closed": closed}


def probe_all(port: int, timeout: float = 10.0) -> dict:
    """:func:`probe` of every case in CASES, keyed by case name."""
    return {name: probe(port, data, timeout) for name, data in CASES.items()}


def capture(out: str, python: str, klippy_python: str | None) -> None:
    import sim_printer
    from capture_auth_routing_reference import free_port, save, start_ref, write_conf
    tmp = tempfile.mkdtemp(prefix="mfhh-", dir="/tmp")
    sim = sim_printer.start(os.path.join(tmp, "klippy"), os.path.join(tmp, "gcodes"),
                            klippy_python)
    try:
        sim_printer.wait_ready(sim.socket_path, 120, sim)
        data = os.path.join(tmp, "data")
        for sub in ("config", "logs", "gcodes", "database", "comms"):
            os.makedirs(os.path.join(data, sub), exist_ok=True)
        port = free_port()
        write_conf(os.path.join(data, "config", "moonraker.conf"), port, sim.socket_path, False)
        proc = start_ref(python, data, port)
        try:
            results = probe_all(port)
        finally:
            proc.terminate()
            proc.wait(15)
        save(out, "http_hostile", {"results": results})
        for k, v in results.items():
            print(k, v)
    finally:
        sim_printer.stop(sim)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    cr.reference_arguments(p, keep=False)
    args = p.parse_args(argv)
    capture(args.out, args.reference_python, args.klippy_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
