"""Endpoints of the extensions API group.  Spec: web_api.md "Extension APIs" and the ``/klippysocket`` bridge.

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any

import flask
from flask_sock import Sock

from ..api import (PERSISTENT_TRANSPORTS, ApiBlueprint, ApiError,
                   ApiRequest, error_response)
from ..components.extensions import RESERVED_EVENTS, Extensions

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("extensions", __name__)


def _component(req: ApiRequest) -> Extensions:
    return req.server.lookup_component("extensions")


def _require_agent(req: ApiRequest, what: str) -> Any:
    conn = req.connection
    if conn is None or conn.client_type != "agent":
        raise ApiError(f"Only connections of the 'agent' type can {what}", 400)
    return conn


@blueprint.endpoint("/server/extensions/list", ["GET"])
def extensions_list(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List Extensions"."""
    ext = _component(req)
    return {"agents": [ext.identity(c) for c in ext.agents()]}


@blueprint.endpoint("/server/extensions/request", ["POST"])
def extensions_request(req: ApiRequest) -> Any:
    """web_api.md "Call an extension method"."""
    args = req.args
    arguments = args.get("arguments", None)
    if arguments is not None and not isinstance(arguments, (dict, list)):
        raise ApiError("Invalid Argument Type [arguments]", 400)
    return _component(req).request(args.get_str("agent"), args.get_str("method"), arguments)


@blueprint.endpoint("/connection/send_event", ["POST"], rpc="connection.send_event",
                    transports=PERSISTENT_TRANSPORTS)
def send_event(req: ApiRequest) -> str:
    """web_api.md "Send an agent event"."""
    conn = _require_agent(req, "send events")
    event = req.args.get_str("event")
    if event in RESERVED_EVENTS:
        raise ApiError(f"Event '{event}' is reserved", 400)
    _component(req).broadcast_event(conn, event, req.args.get("data", None))
    return "ok"


@blueprint.endpoint("/connection/register_remote_method", ["POST"],
                    rpc="connection.register_remote_method", transports=PERSISTENT_TRANSPORTS)
def register_remote_method(req: ApiRequest) -> str:
    """web_api.md "Register a method with Klipper"."""
    conn = _require_agent(req, "register methods")
    _component(req).register_remote_method(conn, req.args.get_str("method_name"))
    return "ok"


@blueprint.before_app_request
def _bridge_gate() -> Any:
    """Authenticate and check Klippy before upgrading ``/klippysocket``."""
    if flask.request.path != "/klippysocket":
        return None
    server = flask.current_app.extensions["moonflask"]
    try:
        user = server.auth.authenticate_websocket(flask.request)
    except ApiError as err:
        return error_response(err.status, err.message)
    # Bridge frames go to Klippy undecoded: no way to log in afterwards, so
    # with [authorization] the upgrade itself needs credentials (a oneshot
    # token in the query string, or a trusted address).
    if user is None and server.config.has_section("authorization"):
        return error_response(401, "Unauthorized")
    if not server.klippy.connected:
        return error_response(503, "Klippy Host not connected")
    return None


def bridge_websocket(ws: Any) -> None:
    """The ``/klippysocket`` handler (flask-sock): the extensions component
    pumps frames between this websocket and a Klippy connection of its own."""
    server = flask.current_app.extensions["moonflask"]
    server.lookup_component("extensions").run_bridge(ws)


Sock().route("/klippysocket", bp=blueprint)(bridge_websocket)
