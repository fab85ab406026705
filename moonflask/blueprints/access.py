"""The ``access.*`` endpoints.  Spec: web_api.md "Authorization".

A core group (always registered, app.BLUEPRINTS): authorization
is always in force.  ``login``, ``refresh_jwt`` and ``info`` are reachable
without credentials (``auth=False``); everything else needs a user.
"""
from __future__ import annotations

from typing import Any

from ..api import ApiBlueprint, ApiError, ApiRequest

blueprint = ApiBlueprint("access", __name__, component="authorization")


def _auth(req: ApiRequest) -> Any:
    return req.server.auth


@blueprint.endpoint("/access/login", ["POST"], auth=False)
def login(req: ApiRequest) -> dict[str, Any]:
    """"Login User": ``{"username", "token", "refresh_token", "action", "source"}``."""
    auth = _auth(req)
    username = req.args.get_str("username")
    password = req.args.get_str("password")
    source = req.args.get_str("source", None)
    return auth.login(username, password, source, req.ip, req.connection)


@blueprint.endpoint("/access/logout", ["POST"])
def logout(req: ApiRequest) -> dict[str, Any]:
    """"Logout Current User": every token of the user becomes invalid."""
    return _auth(req).logout(req.user, req.connection)


@blueprint.endpoint("/access/user", ["GET", "POST", "DELETE"])
def user(req: ApiRequest) -> dict[str, Any]:
    """"Get Current User" / "Create User" / "Delete User"."""
    auth = _auth(req)
    if req.method == "GET":
        if req.user is None:
            raise ApiError("Unauthorized", 401)
        return {"username": req.user["username"], "source": req.user.get("source", "moonraker"),
                "created_on": req.user.get("created_on", 0.0)}
    username = req.args.get_str("username")
    if req.method == "POST":
        return auth.create_user(username, req.args.get_str("password"))
    return auth.delete_user(username, req.user)


@blueprint.endpoint("/access/users/list", ["GET"])
def users_list(req: ApiRequest) -> dict[str, Any]:
    """"List Available Users"."""
    auth = _auth(req)
    return {"users": [auth.public(u) for u in auth.real_users()]}


@blueprint.endpoint("/access/user/password", ["POST"])
def user_password(req: ApiRequest) -> dict[str, Any]:
    """"Reset User Password" (the caller's own)."""
    auth = _auth(req)
    return auth.reset_password(req.user, req.args.get_str("password"),
                               req.args.get_str("new_password"))


@blueprint.endpoint("/access/refresh_jwt", ["POST"], auth=False)
def refresh_jwt(req: ApiRequest) -> dict[str, Any]:
    """"Refresh JSON Web Token"."""
    return _auth(req).refresh(req.args.get_str("refresh_token"))


@blueprint.endpoint("/access/oneshot_token", ["GET"])
def oneshot_token(req: ApiRequest) -> str:
    """"Generate a Oneshot Token": 32 base32 characters, 5 s, single use."""
    auth = _auth(req)
    if req.user is None:
        raise ApiError("Unauthorized", 401)
    return auth.new_oneshot(req.user)


@blueprint.endpoint("/access/info", ["GET"], auth=False)
def info(req: ApiRequest) -> dict[str, Any]:
    """"Retrieve information about authorization endpoints"."""
    auth = _auth(req)
    trusted = bool(req.user and req.user.get("username") == "_TRUSTED_USER_")
    if req.user is None and req.connection is None:
        trusted = auth.is_trusted(req.ip)
    elif req.connection is not None:
        trusted = auth.is_trusted(req.connection.ip) or req.connection.transport != "websocket"
    return {"default_source": auth.default_source,
            "available_sources": list(auth.available_sources),
            "login_required": bool(auth.force_logins and auth.real_users()),
            "trusted": trusted}


@blueprint.endpoint("/access/api_key", ["GET", "POST"])
def api_key(req: ApiRequest) -> str:
    """"Get the Current API Key" / "Generate a New API Key"."""
    auth = _auth(req)
    if req.method == "POST":
        return auth.new_api_key()
    return auth.api_key
