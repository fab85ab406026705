"""Authorization: who may call what.  Spec: web_api.md "Authorization".

Every transport asks this module, never decides itself:
- ``authenticate_http(request, endpoint) -> user | None`` for each HTTP call
  (raises ApiError 401 when the endpoint needs credentials it lacks);
- ``authenticate_websocket(request) -> user | None`` at upgrade time;
- ``check_connection(conn, endpoint) -> user | None`` for each JSON-RPC call
  on a persistent connection;
- ``require_user(user, endpoint)`` for JSON-RPC over HTTP and MQTT;
- ``install(app)`` adds CORS handling to the Flask app.

Without an ``[authorization]`` section every client is allowed, as in
Moonraker.
"""
from __future__ import annotations

from typing import Any

import flask


class OpenAccess:
    """The policy when ``[authorization]`` is not configured: allow everything."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def authenticate_http(self, request: flask.Request, endpoint: Any) -> dict | None:
        """Always None (no user), never raises."""
        return None

    def authenticate_websocket(self, request: flask.Request) -> dict | None:
        """Always None (no user)."""
        return None

    def check_connection(self, conn: Any, endpoint: Any) -> dict | None:
        """The connection's user (None); never raises."""
        return conn.user

    def require_user(self, user: dict | None, endpoint: Any) -> None:
        """Never raises."""

    def identify(self, conn: Any, access_token: str | None, api_key: str | None) -> None:
        """Nothing to check."""

    def install(self, app: flask.Flask) -> None:
        """No CORS headers without ``[authorization] cors_domains``."""


def load_authorization(server: Any) -> Any:
    """The authorization policy for ``server``'s configuration."""
    return OpenAccess(server)
