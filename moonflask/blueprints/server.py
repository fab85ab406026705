"""Server administration endpoints.  Spec: server.md (all sections)."""
from __future__ import annotations

from typing import Any

from .. import API_VERSION
from ..api import ApiBlueprint, ApiError, ApiRequest, PERSISTENT_TRANSPORTS

blueprint = ApiBlueprint("server", __name__)


@blueprint.endpoint("/server/info", ["GET"])
def server_info(req: ApiRequest) -> dict[str, Any]:
    """server.md "Query Server Info"."""
    srv = req.server
    return {
        "klippy_connected": srv.klippy.connected,
        "klippy_state": srv.klippy.state,
        "components": srv.component_names(),
        "failed_components": list(srv.failed_components),
        "registered_directories": list(srv.registered_directories),
        "warnings": srv.config.warnings(),
        "websocket_count": srv.connections.websocket_count(),
        "moonraker_version": srv.version,
        "missing_klippy_requirements": [],
        "api_version": list(API_VERSION),
        "api_version_string": ".".join(str(v) for v in API_VERSION),
    }


#: The order of the reference's ``server.config`` sections (the order its
#: components load); other sections follow in the order they were read.
CONFIG_ORDER = ("server", "template", "secrets", "database", "dbus_manager", "file_manager",
                "authorization", "klippy_apis", "machine", "shell_command", "data_store",
                "proc_stats", "job_state", "job_queue", "history", "http_client",
                "announcements", "webcam", "extensions")


@blueprint.endpoint("/server/config", ["GET"])
def server_config(req: ApiRequest) -> dict[str, Any]:
    """server.md "Get Server Configuration": ``config`` (every section in
    force, written or not, with each option's parsed value or default),
    ``orig`` (as written) and ``files`` (sections per file)."""
    cfg = req.server.config
    rank = {name: i for i, name in enumerate(CONFIG_ORDER)}
    names = sorted(cfg.parsed, key=lambda n: rank.get(n, len(rank)))
    return {"config": {k: dict(cfg.parsed[k]) for k in names},
            "orig": cfg.orig(), "files": [dict(f) for f in cfg.files]}


@blueprint.endpoint("/server/temperature_store", ["GET"])
def temperature_store(req: ApiRequest) -> dict[str, Any]:
    """server.md "Request Cached Temperature Data"."""
    include = req.args.get_boolean("include_monitors", False)
    return req.server.data_store.get_temperature_store(include)


@blueprint.endpoint("/server/gcode_store", ["GET"])
def gcode_store(req: ApiRequest) -> dict[str, Any]:
    """server.md "Request Cached GCode Responses"."""
    count = req.args.get_int("count", None)
    return {"gcode_store": req.server.data_store.get_gcode_store(count)}


@blueprint.endpoint("/server/logs/rollover", ["POST"])
def logs_rollover(req: ApiRequest) -> dict[str, Any]:
    """server.md "Rollover Logs".  ``klipper`` cannot be rolled over: moonflask
    does not manage Klipper's service here, so it is reported in ``failed``."""
    app = req.args.get_str("application", None)
    apps = ["moonraker", "klipper"] if app is None else [app]
    rolled: list[str] = []
    failed: dict[str, str] = {}
    for name in apps:
        if name == "moonraker":
            try:
                req.server.logs.rollover()
                rolled.append(name)
            except OSError as err:
                failed[name] = str(err)
        elif name == "klipper":
            failed[name] = "Unable to detect Klipper Service, cannot perform manual rollover"
        else:
            raise ApiError(f"Unknown application {name}", 400)
    return {"rolled_over": rolled, "failed": failed}


@blueprint.endpoint("/server/restart", ["POST"])
def server_restart(req: ApiRequest) -> str:
    """server.md "Restart Server": answers ``ok``, then restarts."""
    req.server.restart()
    return "ok"


@blueprint.endpoint("/server/connection/identify", ["POST"],
                    transports=PERSISTENT_TRANSPORTS, auth=False)
def connection_identify(req: ApiRequest) -> dict[str, Any]:
    """server.md "Identify Connection"."""
    conn = req.connection
    if conn is None:
        raise ApiError("Identify is only available on persistent connections", 400)
    args = req.args
    name = args.get_str("client_name")
    version = args.get_str("version")
    client_type = args.get_str("type")
    url = args.get_str("url")
    req.server.auth.identify(conn, args.get_str("access_token", None),
                             args.get_str("api_key", None))
    conn.identify(name, version, client_type, url)
    return {"connection_id": conn.uid}


@blueprint.endpoint("/server/websocket/id", ["GET"], transports=PERSISTENT_TRANSPORTS)
def websocket_id(req: ApiRequest) -> dict[str, Any]:
    """server.md "Get Websocket ID" (deprecated)."""
    if req.connection is None:
        raise ApiError("No connection", 400)
    return {"websocket_id": req.connection.uid}
