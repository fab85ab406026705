"""Request size limits shared by both HTTP servers (``python -m moonflask``'s
gevent handler and gunicorn), as the reference answers them.

Moonraker 0.11 (tornado) accepts a request line and a header block of up to
64 KiB together: clients send whole gcode scripts in the query string
(``/printer/gcode/script?script=...``).  Beyond that moonflask answers 414
(request line) or 431 (headers) with Moonraker's JSON error body, where the
reference just closes the connection.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

MAX_HEADER_BYTES = 65536          # request line + header lines, bytes
URI_TOO_LONG = "Request-URI Too Long"
HEADERS_TOO_LARGE = "Request Header Fields Too Large"


def error_body(status: int, reason: str) -> bytes:
    """Moonraker's error body ``{"error": {"code", "message"}}`` as bytes."""
    return ('{"error": {"code": %d, "message": "%s"}}' % (status, reason)).encode()


def error_response_bytes(status: int, reason: str) -> bytes:
    """A complete HTTP/1.1 error response (status line, headers, JSON body)
    that closes the connection."""
    body = error_body(status, reason)
    return (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def request_head_size(environ: dict) -> tuple[int, int]:
    """``(request line bytes, header lines bytes)`` of a WSGI request, as
    sent (``RAW_URI``/``REQUEST_URI`` when the server provides it)."""
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or (
        environ.get("PATH_INFO", "") + ("?" + environ["QUERY_STRING"]
                                        if environ.get("QUERY_STRING") else ""))
    line = len(environ.get("REQUEST_METHOD", "")) + len(uri) + \
        len(environ.get("SERVER_PROTOCOL", "HTTP/1.1")) + 4
    headers = 0
    for key, value in environ.items():
        if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if isinstance(value, str):
                headers += len(key) - (5 if key.startswith("HTTP_") else 0) + len(value) + 4
    return line, headers


class RequestHeadLimit:
    """WSGI middleware answering 414/431 for a request head over
    MAX_HEADER_BYTES (the gunicorn entry: gunicorn's own limits are set wide
    open in gunicorn.conf.py and this applies the reference's)."""

    def __init__(self, app: Callable, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        line, headers = request_head_size(environ)
        if line > self.limit:
            return self._refuse(start_response, 414, URI_TOO_LONG)
        if line + headers > self.limit:
            return self._refuse(start_response, 431, HEADERS_TOO_LARGE)
        force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
        if not callable(force_close):
            return self.app(environ, start_response)

        def closing_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            # an application's "Connection: close" (a malformed body) closes for real
            for name, value in headers:
                if name.lower() == "connection" and value.lower() == "close":
                    force_close()
            return start_response(status, headers, exc_info)
        return self.app(environ, closing_start_response)

    @staticmethod
    def _refuse(start_response: Any, status: int, reason: str) -> list[bytes]:
        # gunicorn drops a "Connection: close" the application sets (hop-by-hop)
        # and would read the next pipelined request: close through its Response
        force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
        if callable(force_close):
            force_close()
        body = error_body(status, reason)
        start_response(f"{status} {reason}", [("Content-Type", "application/json; charset=UTF-8"),
                                               ("Content-Length", str(len(body))),
                                               ("Connection", "close")])
        return [body]
