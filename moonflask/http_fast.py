"""The HTTP fast path: registry endpoints answered without Flask's request
machinery (issue 11, request path).

A ``GET /server/info`` through Flask spends most of its time in Flask and
werkzeug (the request and app contexts, URL matching, the ``Response``
object, the before/after-request hooks), not in moonflask.  The endpoints
that are also JSON-RPC methods need none of that: their handlers see only an
:class:`~moonflask.api.ApiRequest`.  :class:`FastPath` is a WSGI middleware in
front of the Flask app that serves those endpoints directly and hands every
other request to Flask unchanged.

A request takes the fast path when all of these hold (else Flask serves it,
with the same result, only slower):

- its verb and exact path are those of a registry endpoint served over HTTP
  and over JSON-RPC (``rpc_methods``) whose result is wrapped as
  ``{"result": ...}``: no dynamic path, no download, no upload;
- it carries no ``Origin`` header (the CORS headers and the preflight are
  Flask's, ``app._install_cors``) and is not an upgrade;
- its body is empty, or JSON with a ``Content-Length`` (a form, multipart or
  chunked body goes to Flask).

What the Flask path does for such a request, this does the same way, with the
same functions: authentication before routing
(``Authorization.authenticate_request``, then ``require_user``), the
arguments (query type hints, then the JSON object body: web_api.md "HTTP API
Overview"), the handler, and the answer: ``{"result": ...}`` as
``application/json``; an :class:`ApiError` as Moonraker's error body; a full
disk as 507; any other exception logged and answered 500.
tests/test_http_fast.py checks each against the Flask path.
"""
from __future__ import annotations

import functools
import logging
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from werkzeug.datastructures import EnvironHeaders

from . import jsonutil
from .api import HTTP, ApiError, ApiRequest, Args, Endpoint, disk_full_error, is_disk_full
from .api import json_body_args, parse_query_args

log = logging.getLogger(__name__)

_JSON_HEADER = ("Content-Type", "application/json")


@functools.lru_cache(maxsize=32)
def _status_line(code: int) -> str:
    """``"404 Not Found"``: the WSGI status line of ``code``."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


class HttpInfo:
    """What a fast-path handler sees of its HTTP request (``ApiRequest.http``),
    the part of a Flask request a JSON-RPC-capable handler may read.

    Attributes:
        args: the query arguments as sent, first value of each key (a
            ``dict``; Flask's ``request.args.get`` gives the same).
        headers: the request headers (case-insensitive ``get``).
        remote_addr: the client's address.
        method: the HTTP verb.  path: the path.  view_args: always ``{}``.
    """

    __slots__ = ("args", "headers", "remote_addr", "method", "path", "view_args")

    def __init__(self, environ: dict, pairs: list[tuple[str, str]]) -> None:
        args: dict[str, str] = {}
        for key, value in pairs:
            args.setdefault(key, value)
        self.args = args
        self.headers = EnvironHeaders(environ)
        self.remote_addr = environ.get("REMOTE_ADDR")
        self.method = environ["REQUEST_METHOD"]
        self.path = environ.get("PATH_INFO", "")
        self.view_args: dict[str, Any] = {}


class FastPath:
    """WSGI middleware serving the eligible registry endpoints (module docstring)
    and passing every other request to ``flask_app``.

    Args:
        flask_app: the WSGI callable of the Flask app (``app.wsgi_app``).
        server: the :class:`moonflask.app.Server`.
        endpoints: the registry's endpoints; the eligible ones are indexed by
            ``(verb, path)`` once, here.
        public_paths: the paths an anonymous caller may reach (as
            ``app._install_auth``): the endpoints declared ``auth=False``.
    """

    def __init__(self, flask_app: Callable, server: Any, endpoints: Iterable[Endpoint],
                 public_paths: Iterable[str]) -> None:
        self.flask_app = flask_app
        self.server = server
        self.public = frozenset(public_paths)
        self.routes: dict[tuple[str, str], Endpoint] = {}
        for ep in endpoints:
            if HTTP in ep.transports and ep.wrap and ep.rpc_methods and "<" not in ep.path:
                for verb in ep.methods:
                    self.routes[(verb, ep.path)] = ep

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        ep = self.routes.get((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        if ep is None or "HTTP_ORIGIN" in environ or "HTTP_UPGRADE" in environ:
            return self.flask_app(environ, start_response)
        ctype = environ.get("CONTENT_TYPE", "")
        length = environ.get("CONTENT_LENGTH", "")
        if "HTTP_TRANSFER_ENCODING" in environ:
            return self.flask_app(environ, start_response)
        body = b""
        if length not in ("", "0"):
            if ctype.split(";", 1)[0].strip().lower() != "application/json":
                return self.flask_app(environ, start_response)
            body = environ["wsgi.input"].read(int(length))
        try:
            status, payload = self._serve(environ, ep, body)
        except Exception as err:   # as Flask's 500 handler (app._install_transports)
            status, payload = self._internal_error(environ, err)
        if not isinstance(payload, bytes):    # a handler's own WSGI response
            return payload(environ, start_response)
        start_response(_status_line(status),
                       [_JSON_HEADER, ("Content-Length", str(len(payload)))])
        return [payload]

    def _serve(self, environ: dict, ep: Endpoint, body: bytes) -> tuple[int, Any]:
        """``(status, JSON bytes)`` for one request, or ``(200, response)``
        when the handler returned its own WSGI response."""
        server = self.server
        path = environ.get("PATH_INFO", "")
        pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        info = HttpInfo(environ, pairs)
        try:
            user = server.auth.authenticate_request(info, path in self.public)
            server.auth.require_user(user, ep)
            args = parse_query_args(pairs)
            args.update(json_body_args(body))
            result = ep.handler(ApiRequest(Args(args), info.method, server, HTTP, None, user,
                                           info.remote_addr, info))
        except ApiError as err:
            return err.status, jsonutil.dumpb(
                {"error": {"code": err.status, "message": err.message}})
        if callable(result) and hasattr(result, "status_code"):   # a flask.Response
            return 200, result
        return 200, jsonutil.dumpb({"result": result})

    def _internal_error(self, environ: dict, err: Exception) -> tuple[int, bytes]:
        if is_disk_full(err, self.server.data_path):
            full = disk_full_error(environ.get("PATH_INFO", ""))
            status, message = full.status, full.message
        else:
            log.error("internal error: %s", err, exc_info=err)
            status, message = 500, "Internal Server Error"
        return status, jsonutil.dumpb({"error": {"code": status, "message": message}})
