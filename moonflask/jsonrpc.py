"""The JSON-RPC 2.0 dispatcher shared by every transport.

Spec: web_api.md "JSON-RPC API Overview"; REFERENCE_NOTES.md "Errors".
Protocol errors: -32700 parse error (``"id": null``), -32600 invalid request,
-32602 positional params, -32601 unknown method.  An :class:`ApiError` becomes
``{"code": status, "message": ...}`` except 404, which becomes -32601.
A request without ``id`` is a notification and gets no reply; a batch (a list)
gets a list of replies.
"""
from __future__ import annotations

import logging
from typing import Any

from . import jsonutil
from .api import ApiError, ApiRequest, Args
from .api import disk_full_error, is_disk_full

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602


def error_reply(code: int, message: str, req_id: Any) -> dict:
    """A JSON-RPC error object ``{"jsonrpc", "error": {"code", "message"}, "id"}``."""
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": req_id}


def api_error_code(status: int) -> int:
    """The JSON-RPC code for an HTTP status (404 -> -32601, 401 -> -32602 as
    Moonraker answers "Unauthorized", else the status)."""
    if status == 404:
        return METHOD_NOT_FOUND
    if status == 401:
        return INVALID_PARAMS
    return status


class Dispatcher:
    """Executes JSON-RPC requests against the endpoint registry.

    Args:
        server: the :class:`moonflask.app.Server`.
    """

    def __init__(self, server: Any) -> None:
        self.server = server

    def dispatch(self, raw: bytes | str, *, transport: str, connection: Any = None,
                 user: dict | None = None, ip: str | None = None) -> str | None:
        """Run one frame (a request or a batch) and return the encoded reply,
        or None when nothing is to be sent back (notifications only)."""
        try:
            obj = jsonutil.loads(raw)
        except ValueError:
            return jsonutil.dumps(error_reply(PARSE_ERROR, "Parse error", None))
        reply = self.execute(obj, transport=transport, connection=connection, user=user, ip=ip)
        return None if reply is None else jsonutil.dumps(reply)

    def execute(self, obj: Any, *, transport: str, connection: Any = None,
                user: dict | None = None, ip: str | None = None) -> Any:
        """Run a decoded request object or batch list; returns the reply
        object (a dict, a list for batches) or None."""
        if isinstance(obj, list):
            if not obj:
                return error_reply(INVALID_REQUEST, "Invalid Request", None)
            replies = [r for r in (self._one(item, transport, connection, user, ip)
                                   for item in obj) if r is not None]
            return replies or None
        return self._one(obj, transport, connection, user, ip)

    def call(self, method: str, params: dict | None = None, *, transport: str = "internal",
             connection: Any = None, user: dict | None = None) -> Any:
        """Call a JSON-RPC method from inside the server (templates, MQTT
        bridges); returns its result or raises ApiError."""
        found = self.server.registry.lookup(method, transport)
        if found is None:
            raise ApiError(f"Method not found: {method}", 404)
        ep, verb = found
        req = ApiRequest(Args(params or {}), verb, self.server, transport, connection, user)
        return ep.handler(req)

    def _one(self, req: Any, transport: str, connection: Any, user: dict | None,
             ip: str | None) -> dict | None:
        if not isinstance(req, dict):
            return error_reply(INVALID_REQUEST, "Invalid Request", None)
        req_id = req.get("id")
        has_id = req_id is not None  # "id": null is a notification, as in the reference
        method = req.get("method")
        if req.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return error_reply(INVALID_REQUEST, "Invalid Request", req_id)
        params = req.get("params", {})
        if not isinstance(params, dict):
            reply = error_reply(INVALID_PARAMS, "Invalid params: expected an object", req_id)
            return reply if has_id else None
        found = self.server.registry.lookup(method, transport)
        if found is None:
            # Answered even without an id (the reference does): nothing is dropped silently.
            message = "Method not found"
            if method in self.server.registry.by_rpc:
                message = f"Method not found for transport {transport.upper()}"
            return error_reply(METHOD_NOT_FOUND, message, req_id)
        ep, verb = found
        try:
            if connection is not None:
                user = self.server.auth.check_connection(connection, ep)
            elif ep.auth and transport == "http":   # MQTT / internal callers are trusted
                self.server.auth.require_user(user, ep)
            result = ep.handler(ApiRequest(Args(params), verb, self.server, transport,
                                           connection, user, ip))
        except ApiError as err:
            if not has_id:
                return None
            return error_reply(api_error_code(err.status), err.message, req_id)
        except Exception as err:  # a bug in a handler: report it, keep the connection
            if is_disk_full(err, self.server.data_path):
                full = disk_full_error(method)
                return error_reply(full.status, full.message, req_id) if has_id else None
            log.exception("JSON-RPC method %s failed", method)
            if not has_id:
                return None
            return error_reply(500, f"Internal Server Error: {err}", req_id)
        if not has_id:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": req_id}
