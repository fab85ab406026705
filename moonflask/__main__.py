"""``python -m moonflask -d DATA_PATH [-c CONFIG] [-l LOGFILE]``: Moonraker's
command line.  gevent patches the standard library before anything else is
imported (``lean.patch_gevent``: patch_all, ssl patched on its first use);
the app is served by gevent's WSGI server in this one process."""
from moonflask import lean

lean.patch_gevent()
lean.defer_unused_imports()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from http import client as http_client  # noqa: E402

from gevent import pywsgi  # noqa: E402
from gevent.pywsgi import OldMessage, WSGIHandler, WSGIServer, _InvalidClientRequest  # noqa: E402,E501

from .app import Server, create_app  # noqa: E402
from .config import ConfigError  # noqa: E402
from .http_limits import (HEADERS_TOO_LARGE, MAX_HEADER_BYTES, URI_TOO_LONG,  # noqa: E402
                          error_response_bytes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Moonraker's options: -d data path, -c config, -l log file, -n no log
    file, -u unix socket path, -g debug endpoints, -v verbose."""
    p = argparse.ArgumentParser(prog="moonflask", description="Moonraker-compatible API server")
    p.add_argument("-d", "--datapath", default=os.environ.get("MOONFLASK_DATA_PATH",
                                                             "~/printer_data"))
    p.add_argument("-c", "--configfile", default=None)
    p.add_argument("-l", "--logfile", default=None)
    p.add_argument("-n", "--nologfile", action="store_true")
    p.add_argument("-u", "--unixsocket", default=None)
    p.add_argument("-g", "--debug", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


# gevent's own limit on the request line is 8 KiB; it reads the line with,
# and compares it to, this module constant: raise it to the reference's 64 KiB.
pywsgi.MAX_REQUEST_LINE = MAX_HEADER_BYTES
URI_TOO_LONG_RESPONSE = error_response_bytes(414, URI_TOO_LONG)
HEADERS_TOO_LARGE_RESPONSE = error_response_bytes(431, HEADERS_TOO_LARGE)


# RFC 9112: a header line is ``token ":" OWS field-value OWS CRLF``; no
# obsolete line folding, no bare LF, no control bytes (HTAB aside) in values.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
                          rb"((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*\r\n")
# the request line: method token, a target without spaces or controls, HTTP/1.x, CRLF
_REQUEST_LINE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n")


def parse_request_headers(fp, budget: int = MAX_HEADER_BYTES) -> OldMessage:
    """Read a request's header block from ``fp`` into the message object
    gevent's handler expects, strictly as RFC 9112 section 5 (a request
    that is refused is answered 400 and its connection closed, so nothing
    after it is read as a request; tests/test_http_hostile.py).  Faster
    than ``http.client.parse_headers`` (the ``email`` package's parser, a
    tenth of a small request's cost), which also accepts what this refuses.

    Args:
        budget: the bytes the header lines may take together (what is left
            of MAX_HEADER_BYTES after the request line).
    Returns: the message; ``status`` is set when the block is refused:
    HEADERS_TOO_LARGE over ``budget`` (answered 431), else a reason
    answered 400: more than 100 headers, a line that is not
    ``name: value`` CRLF (bare LF, obsolete folding, a space before the
    colon, a NUL or control byte in the name or value), the connection
    closed before the blank line."""
    msg = OldMessage()
    headers = msg._headers
    match = _HEADER_LINE.fullmatch
    while True:
        line = fp.readline(budget + 1)
        budget -= len(line)
        if budget < 0:
            msg.status = HEADERS_TOO_LARGE
            return msg
        if line == b"\r\n":
            return msg
        if len(headers) >= http_client._MAXHEADERS:
            msg.status = "Too many headers"
            return msg
        m = match(line)
        if m is None:
            msg.status = "Incomplete headers" if not line else "Invalid header line"
            return msg
        headers.append((m.group(1).decode("ascii"), m.group(2).decode("iso-8859-1")))


def check_framing(headers: list[tuple[str, str]]) -> str | None:
    """Why a request's body framing is refused (answered 400), or None.

    Refused (RFC 9112 section 6.3, the request-smuggling cases): more than
    one Content-Length, a Content-Length that is not digits, both
    Content-Length and Transfer-Encoding, a Transfer-Encoding other than
    one ``chunked``."""
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    codings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    if len(lengths) > 1:
        return "Duplicate Content-Length"
    if lengths and not (lengths[0].isdigit() and lengths[0].isascii()):
        return "Invalid Content-Length"
    if codings:
        if lengths:
            return "Content-Length with Transfer-Encoding"
        if len(codings) > 1 or codings[0].lower() != "chunked":
            return "Unsupported Transfer-Encoding"
    return None


class MoonflaskHandler(WSGIHandler):
    """gevent's WSGI handler with these changes:

    - request headers are parsed by :func:`parse_request_headers`, strictly,
      and the request line and body framing checked (:meth:`read_request`):
      a malformed or ambiguous request gets one 400 and the connection is
      closed (no request smuggling);
    - a request line and header block of up to 64 KiB together are accepted
      (http_limits.MAX_HEADER_BYTES, as the reference), 414/431 beyond, with
      Moonraker's JSON error body, once the rest of the head is read (so the
      client gets the answer, not a reset);
    - the status line, the headers and the first body chunk go out in one
      ``send`` (gevent sends headers and body apart: one more syscall per
      response, and a Nagle stall without TCP_NODELAY);
    - no access-log line is formatted when there is no access log;
    - a connection that was upgraded to a websocket is closed when the
      websocket session ends, instead of being read as the next HTTP request
      (the client would wait for the TCP close until it times out).
    """

    _pending: bytearray | None = None

    def MessageClass(self, fp, *_args):  # noqa: N802 (gevent's name)
        msg = parse_request_headers(fp, MAX_HEADER_BYTES - len(self.requestline or ""))
        if not msg.status:   # before gevent drops Content-Length beside chunked
            msg.status = check_framing(msg._headers) or ""
        return msg

    def read_request(self, raw_requestline: str) -> bool:
        """gevent's, after a strict check of the request line (bare LF, extra
        words, controls: 400); the headers and the body framing are checked
        in :meth:`MessageClass` (:func:`check_framing`: 400).  A refused
        request closes the connection (gevent's _handle_client_error)."""
        if _REQUEST_LINE.fullmatch(raw_requestline) is None:
            raise _InvalidClientRequest(f"Invalid request line: {raw_requestline[:200]!r}")
        return super().read_request(raw_requestline)

    def handle_one_request(self):
        result = super().handle_one_request()
        if isinstance(result, tuple) and result[0] == "414":
            self._drain_request_head()
            return ("414", URI_TOO_LONG_RESPONSE)
        return result

    def _handle_client_error(self, ex: Exception):
        headers = getattr(self, "headers", None)
        if getattr(headers, "status", None) == HEADERS_TOO_LARGE:
            self.log_error("(from %s) request head over %d bytes", self.client_address,
                           MAX_HEADER_BYTES)
            self._drain_request_head()
            return ("431", HEADERS_TOO_LARGE_RESPONSE)
        return super()._handle_client_error(ex)

    def _drain_request_head(self, limit: int = 1 << 20, timeout: float = 2.0) -> None:
        """Read what is left of a refused request's head (up to ``limit``
        bytes, ``timeout`` seconds), so that closing the socket does not
        reset the connection before the client reads the error."""
        try:
            self.socket.settimeout(timeout)
            read = 0
            while read < limit:
                line = self.rfile.readline(65536)
                read += len(line)
                if line in (b"\r\n", b"\n", b""):
                    return
        except (OSError, ValueError):
            return

    def log_request(self) -> None:
        """No access log (the server runs with ``log=None``): gevent would
        still format each request's log line (time stamp included), and
        throw it away."""
        if not isinstance(self.server.log, pywsgi._NoopLog):
            super().log_request()

    def handle_one_response(self) -> None:
        super().handle_one_response()
        if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            self.close_connection = True

    def _write_with_headers(self, data: bytes) -> None:
        self._pending = bytearray()
        try:
            super()._write_with_headers(data)
        finally:
            pending, self._pending = self._pending, None
            if pending:
                super()._sendall(pending)

    def _sendall(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending += data
        else:
            super()._sendall(data)


def listen_socket(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, with TCP_NODELAY (inherited by accepted
    sockets): gevent's WSGI handler sends headers and body in two writes, and
    Nagle's algorithm would hold the body back for the client's delayed ACK
    (40 ms a request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def raise_fd_limit() -> None:
    """Raise the open-file limit to its hard maximum: each websocket holds two
    descriptors, and the usual soft limit of 1024 caps clients near 500."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    args = parse_args(argv)
    raise_fd_limit()
    try:
        server = Server(args.datapath, args.configfile,
                        "" if args.nologfile else args.logfile, args.debug, args.unixsocket)
    except ConfigError as err:
        print(f"moonflask: configuration error: {err}", file=sys.stderr)
        return 1
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    server.restart_hook = lambda: os.execv(sys.executable,
                                           [sys.executable, "-m", "moonflask", *sys.argv[1:]])
    app = create_app(server)
    http = WSGIServer(listen_socket(server.host, server.port), app, log=None,
                      error_log=logging.getLogger("moonflask.http"),
                      handler_class=MoonflaskHandler)
    logging.getLogger(__name__).info("moonflask %s listening on %s:%d (data %s)",
                                     server.version, server.host, server.port, server.data_path)

    def shutdown() -> None:
        server.stop()          # closes websockets first, so the HTTP stop has nothing to wait for
        http.stop(timeout=1)

    lean.settle_after_start(server.events)
    gevent.signal_handler(signal.SIGTERM, shutdown)
    gevent.signal_handler(signal.SIGINT, shutdown)
    http.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
