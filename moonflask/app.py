"""create_app(): read the configuration, build the components, register the
blueprints and transports, start the workers.

:class:`Server` is the container every handler reaches as ``req.server``:
``config``, ``events``, ``connections``, ``klippy``, ``jsonrpc``,
``registry``, ``auth``, ``data_store`` and the optional ``components`` by
Moonraker's component names.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import time
import types
from typing import Any

import flask
import gevent
import simple_websocket
from gevent.server import StreamServer
from werkzeug.middleware.proxy_fix import ProxyFix

from . import MOONRAKER_VERSION
from .api import (HTTP, ApiError, ApiRequest, Args, Endpoint, Registry, error_response,
                  json_body_args, json_response, parse_query_args)
from .api import disk_full_error, is_disk_full
from .components.authorization import CORS_ALLOW_HEADERS, CORS_ALLOW_METHODS, load_authorization
from .config import ConfigFile
from .http_fast import FastPath
from .connections import ConnectionManager, NoReaderThread, UnixConnection, WebsocketConnection
from .components.data_store import DataStore
from .jsonrpc import Dispatcher
from .components.klippy_apis import Klippy
from .logs import LogManager
from .notify import EventBus
from .workers import Supervisor

log = logging.getLogger(__name__)


def defer_import(name: str) -> None:
    """Put a stand-in for module ``name`` in ``sys.modules`` that imports the
    real module on its first attribute access: a library that imports
    ``name`` at its top but uses it only in features moonflask never calls
    then does not load it (nor what it imports).  No-op when ``name`` is
    already imported."""
    if name in sys.modules:
        return
    stub = types.ModuleType(name)

    def load(attr: str) -> Any:
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attr)
    stub.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = stub


# streaming_form_data (the upload parser) imports smart_open (requests,
# urllib3, charset_normalizer, ...) and aiofiles for targets moonflask does
# not use: 7 MiB of RSS from the first upload on (issue 11, memory).
for _name in ("smart_open", "aiofiles"):
    defer_import(_name)

# Components, in load order: Moonraker's name -> (module, the config section
# that enables it, a prefix ending in a space for "[notifier NAME]"-style
# sections, or None when always loaded).  A module provides
# ``load_component(server, section) -> object`` (moonflask/components/).
COMPONENTS: dict[str, tuple[str, str | None]] = {
    "database": ("moonflask.components.database", None),
    "file_manager": ("moonflask.components.file_manager.manager", None),
    "machine": ("moonflask.components.machine", None),
    "proc_stats": ("moonflask.components.proc_stats", None),
    "job_state": ("moonflask.components.job_state", None),
    "job_queue": ("moonflask.components.job_queue", None),
    "history": ("moonflask.components.history", None),   # loaded by default, as Moonraker
    "announcements": ("moonflask.components.announcements", None),
    "webcam": ("moonflask.components.webcam", None),
    "extensions": ("moonflask.components.extensions", None),
    "notifier": ("moonflask.components.notifier", "notifier "),
    "octoprint_compat": ("moonflask.components.octoprint_compat", "octoprint_compat"),
    "mqtt": ("moonflask.components.mqtt", "mqtt"),
    "sensor": ("moonflask.components.sensor", "sensor "),
    "power": ("moonflask.components.power", "power "),
    "wled": ("moonflask.components.wled", "wled "),
    "button": ("moonflask.components.button", "button "),
    "paneldue": ("moonflask.components.paneldue", "paneldue"),
    "spoolman": ("moonflask.components.spoolman", "spoolman"),
    "zeroconf": ("moonflask.components.zeroconf", "zeroconf"),
    "update_manager": ("moonflask.components.update_manager", "update_manager"),
}

#: Sections the reference lists in ``server.config`` for its core services
#: that have no options (or none of their own here): always in force.
CORE_SECTIONS = ("template", "dbus_manager", "klippy_apis", "shell_command", "http_client")

# API groups (moonflask/blueprints/<group>.py) -> the component they serve:
# a group is registered when its component loaded; None marks the core groups
# (always), DEBUG_ONLY the ``-g`` group.
DEBUG_ONLY = "-g"
BLUEPRINTS: dict[str, str | None] = {
    "server": None,
    "printer": None,
    "access": None,
    "machine": "machine",
    "files": "file_manager",
    "database": "database",
    "history": "history",
    "job_queue": "job_queue",
    "announcements": "announcements",
    "webcams": "webcam",
    "notifiers": "notifier",
    "extensions": "extensions",
    "octoprint": "octoprint_compat",
    "mqtt": "mqtt",
    "sensors": "sensor",
    "power": "power",
    "wled": "wled",
    "spoolman": "spoolman",
    "zeroconf": "zeroconf",
    "update_manager": "update_manager",
    "debug": DEBUG_ONLY,
}

DATA_DIRS = ("config", "logs", "gcodes", "database", "comms")


class Server:
    """Everything one moonflask instance holds.

    Args:
        data_path: the printer data folder (``config/ logs/ gcodes/
            database/ comms/`` are created inside it).
        config_file: moonraker.conf (default ``DATA_PATH/config/moonraker.conf``).
        log_file: the log file (default ``DATA_PATH/logs/moonraker.log``);
            ``""`` logs to stderr only.
        debug: enable the ``debug.*`` endpoints (``-g``).
    Raises:
        ConfigError: the configuration is invalid.
    """

    def __init__(self, data_path: str, config_file: str | None = None,
                 log_file: str | None = None, debug: bool = False,
                 unix_socket: str | None = None) -> None:
        self.version = MOONRAKER_VERSION
        self.started = time.time()
        self.debug = debug
        self.data_path = os.path.abspath(os.path.expanduser(data_path))
        for sub in DATA_DIRS:
            os.makedirs(os.path.join(self.data_path, sub), exist_ok=True)
        self.config_file = os.path.abspath(
            config_file or os.path.join(self.data_path, "config", "moonraker.conf"))
        if log_file is None:
            log_file = os.path.join(self.data_path, "logs", "moonraker.log")
        self.config = ConfigFile(self.config_file)
        srv = self.config.section("server")
        self.host = srv.get("host", "0.0.0.0")
        self.port = srv.getint("port", 7125)
        srv.getint("ssl_port", 7130)
        srv.get("ssl_certificate_path", None)
        srv.get("ssl_key_path", None)
        self.klippy_uds_address = os.path.expanduser(srv.get(
            "klippy_uds_address", os.path.join(self.data_path, "comms", "klippy.sock")))
        self.max_upload_size = srv.getint("max_upload_size", 1024) * 1024 * 1024
        verbose = srv.getboolean("enable_debug_logging", False)
        self.use_xheaders = srv.getboolean("use_xheaders", False)
        prefix = srv.get("route_prefix", None)
        self.route_prefix = "/" + prefix.strip("/") if prefix and prefix.strip("/") else ""
        max_ws = srv.getint("max_websocket_connections", 50, minval=1)
        self.logs = LogManager(log_file or None, verbose or debug)
        self.unix_socket_path = unix_socket or os.path.join(self.data_path, "comms",
                                                            "moonraker.sock")
        self.workers = Supervisor(self.config.runtime_warnings)
        self.registry = Registry()
        self.connections = ConnectionManager(self, max_ws)
        self.events = EventBus(self.connections)
        self.jsonrpc = Dispatcher(self)
        self.klippy = Klippy(self, self.klippy_uds_address)
        ds = self.config.section("data_store")
        self.data_store = DataStore(self, ds.getint("temperature_store_size", 1200, minval=1),
                                    ds.getint("gcode_store_size", 1000, minval=1))
        self.components: dict[str, Any] = {}
        self.failed_components: list[str] = []
        self.registered_directories: list[str] = []
        self.auth = load_authorization(self)
        self._unix_server: StreamServer | None = None
        self.restart_hook = None

    # -- components -------------------------------------------------------
    def load_components(self) -> None:
        """Load each component whose section is configured (or that is always
        loaded); a failing one is logged and reported in ``failed_components``
        and ``warnings``, and the server goes on without it."""
        for name, (modname, section) in COMPONENTS.items():
            if section is not None and not (self.config.prefix_sections(section)
                                            if section.endswith(" ")
                                            else self.config.has_section(section)):
                continue
            try:
                mod = importlib.import_module(modname)
                # every loaded component has its section in force, written or
                # not: its options and defaults are what server.config lists
                cfg = self.config.section(section or name) \
                    if not (section or "").endswith(" ") else None
                self.components[name] = mod.load_component(self, cfg)
            except Exception as err:  # keep serving without it
                log.exception("component %s failed to load", name)
                self.failed_components.append(name)
                self.config.runtime_warnings.append(f"[{section or name}]: {err}")
        for name in CORE_SECTIONS:  # in force with no option (server.config lists them)
            self.config.section(name)

    def register_blueprints(self, app: flask.Flask) -> None:
        """Register every API group whose component is loaded (BLUEPRINTS)."""
        for group, needs in BLUEPRINTS.items():
            if needs == DEBUG_ONLY and not self.debug:
                continue
            if needs not in (None, DEBUG_ONLY) and needs not in self.components:
                continue
            mod = importlib.import_module(f"moonflask.blueprints.{group}")
            register_blueprint(app, self, mod.blueprint)

    def lookup_component(self, name: str, default: Any = ApiError) -> Any:
        """The loaded component ``name``; without a default a missing one
        raises ApiError 404 (its endpoints do not exist either)."""
        comp = self.components.get(name)
        if comp is None:
            if default is ApiError:
                raise ApiError(f"Component {name} not loaded", 404)
            return default
        return comp

    def component_names(self) -> list[str]:
        """The loaded components, Moonraker's names (``server.info`` components)."""
        core = ["application", "websockets", "klippy_connection", "jsonrpc",
                "internal_transport", "klippy_apis", "data_store", "authorization"]
        return core + list(self.components)

    # -- lifetime ---------------------------------------------------------
    def start(self) -> None:
        """Start the Klippy connection and the unix socket server."""
        self._start_unix_socket()
        self.klippy.start()
        self.events.emit("server:started")

    def _start_unix_socket(self) -> None:
        path = self.unix_socket_path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o660)
        listener.listen(64)
        self._unix_server = StreamServer(listener, self._handle_unix_client)
        self._unix_server.start()

    def _handle_unix_client(self, sock: socket.socket, _addr: Any) -> None:
        conn = UnixConnection(self.connections, sock)
        self.connections.add(conn)
        buf = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                if b"\x03" not in data:
                    continue
                *frames, buf = buf.split(b"\x03")
                for frame in frames:
                    if frame.strip():
                        conn.handle_frame(frame)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        """Close every connection, the unix socket and the Klippy connection."""
        self.events.emit("server:shutdown")
        self.workers.stop_all()
        self.connections.close_all()
        if self._unix_server is not None:
            self._unix_server.stop(timeout=1)
        self.klippy.stop()

    def restart(self) -> None:
        """Restart the whole process after the current reply is sent
        (``server.restart``): re-exec under ``python -m moonflask``, SIGHUP
        to the master under gunicorn."""
        def later() -> None:
            gevent.sleep(0.2)
            self.stop()
            if self.restart_hook is not None:
                self.restart_hook()
            else:
                os.kill(os.getppid(), signal.SIGHUP)
        gevent.spawn(later)


# -- HTTP plumbing ------------------------------------------------------------
def http_args(request: flask.Request) -> dict[str, Any]:
    """Query arguments (with type hints) overlaid with body arguments (JSON
    object or url-encoded form).  A malformed JSON body is a 400."""
    args = parse_query_args(request.args.items(multi=True))
    ctype = request.mimetype
    if ctype == "application/json":
        args.update(json_body_args(request.get_data(cache=True)))
    elif ctype == "application/x-www-form-urlencoded":
        args.update(request.form.to_dict())
    return args


def make_view(server: Server, ep: Endpoint):
    """The Flask view serving endpoint ``ep`` over HTTP."""
    def view(**_path_args: Any) -> flask.Response:
        request = flask.request
        try:
            if "http_user" in flask.g:          # authenticated before routing
                user = flask.g.http_user
                server.auth.require_user(user, ep)
            else:
                user = server.auth.authenticate_http(request, ep)
            args = Args(http_args(request))
            result = ep.handler(ApiRequest(args, request.method, server, HTTP, None, user,
                                           request.remote_addr, request))
        except ApiError as err:
            return error_response(err.status, err.message)
        if isinstance(result, flask.Response):
            return result
        return json_response({"result": result} if ep.wrap else result)
    view.__name__ = f"api_{ep.component}_{'_'.join(ep.methods)}_{ep.path}"
    return view


def register_blueprint(app: flask.Flask, server: Server, bp: Any) -> None:
    """Register an ApiBlueprint: its endpoints in the registry and as HTTP
    routes, its plain Flask routes as a blueprint."""
    for ep in bp.endpoints:
        server.registry.add(ep)
        if HTTP in ep.transports:
            app.add_url_rule(ep.path, endpoint=f"{ep.path}#{'|'.join(ep.methods)}",
                             view_func=make_view(server, ep), methods=list(ep.methods))
    app.register_blueprint(bp)


def create_app(server: Server | None = None, start: bool = True) -> flask.Flask:
    """Build the WSGI application.

    Args:
        server: a prepared :class:`Server`; by default one is built from the
            ``MOONFLASK_DATA_PATH``/``MOONFLASK_CONFIG``/``MOONFLASK_LOG``
            environment (the gunicorn entry, ``wsgi.py``).
        start: start the Klippy connection and the unix socket now.
    Returns: the Flask app, with ``app.extensions["moonflask"]`` = the Server.
    """
    if server is None:
        server = Server(os.environ.get("MOONFLASK_DATA_PATH", "~/printer_data"),
                        os.environ.get("MOONFLASK_CONFIG") or None,
                        os.environ.get("MOONFLASK_LOG") or None)
    app = flask.Flask("moonflask")
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "receive_bytes": 65536}
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["moonflask"] = server
    server.load_components()
    server.register_blueprints(app)
    _install_transports(app, server)
    _install_cors(app, server)
    _install_auth(app, server)
    app.wsgi_app = FastPath(app.wsgi_app, server, server.registry.endpoints,  # type: ignore
                            public_paths(server))
    if server.use_xheaders:  # behind nginx: the client address comes from X-Forwarded-For
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore
    if server.route_prefix:
        app.wsgi_app = _PrefixMiddleware(app.wsgi_app, server.route_prefix)  # type: ignore
    if start:
        server.start()
    return app


class _PrefixMiddleware:
    """Serve the API under ``[server] route_prefix`` (``/printer1/server/info``)."""

    def __init__(self, wsgi_app: Any, prefix: str) -> None:
        self.wsgi_app = wsgi_app
        self.prefix = prefix

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == self.prefix or path.startswith(self.prefix + "/"):
            environ["PATH_INFO"] = path[len(self.prefix):] or "/"
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
        return self.wsgi_app(environ, start_response)


def _install_transports(app: flask.Flask, server: Server) -> None:
    @app.before_request
    def _websocket_admission() -> Any:
        # Decided before the upgrade, so a refusal is a plain HTTP error.
        if flask.request.path != "/websocket":
            return None
        if server.connections.websocket_limit_reached():
            return error_response(503, "Maximum Number of Websocket Connections Reached")
        flask.g.ws_user, flask.g.ws_refused = server.auth.websocket_credentials(flask.request)
        return None

    @app.route("/websocket", websocket=True)
    def websocket() -> Any:
        request = flask.request
        ws = simple_websocket.Server(request.environ, receive_bytes=65536,
                                     thread_class=NoReaderThread)
        conn = WebsocketConnection(server.connections, ws, request.remote_addr,
                                   flask.g.get("ws_user"))
        conn.credentials_refused = bool(flask.g.get("ws_refused"))
        server.connections.add(conn)
        try:
            conn.serve()
        finally:
            conn.close()
        return _websocket_finished(ws)

    @app.route("/server/jsonrpc", methods=["POST"])
    def http_jsonrpc() -> flask.Response:
        request = flask.request
        try:
            user = flask.g.http_user if "http_user" in flask.g \
                else server.auth.authenticate_http(request, None)
        except ApiError as err:
            return error_response(err.status, err.message)
        reply = server.jsonrpc.dispatch(request.get_data(), transport=HTTP, user=user,
                                        ip=request.remote_addr)
        if reply is None:  # notifications only: nothing to answer
            return flask.Response("", status=200)
        return flask.Response(reply, status=200, mimetype="application/json")

    @app.errorhandler(404)
    def not_found(_err: Any) -> flask.Response:
        return error_response(404, "Not Found")

    @app.errorhandler(405)
    def not_allowed(_err: Any) -> flask.Response:
        return error_response(405, "Method Not Allowed")

    @app.errorhandler(ApiError)
    def api_error(err: ApiError) -> flask.Response:
        return error_response(err.status, err.message)

    # a malformed request body (a bad chunk size) raises the HTTP server's
    # parser error from the body read: the client's error, answered 400 and
    # the connection closed (gunicorn's ParseException, gevent's _InvalidClientInput)
    body_errors = [getattr(sys.modules.get(mod), name, None) for mod, name in (
        ("gunicorn.http.errors", "ParseException"), ("gevent.pywsgi", "_InvalidClientInput"))]
    for exc in body_errors:
        if exc is not None:
            app.register_error_handler(exc, _bad_body)

    @app.errorhandler(500)
    def internal(err: Any) -> flask.Response:
        original = getattr(err, "original_exception", None) or err
        if is_disk_full(original, server.data_path):    # a write anywhere: 507
            full = disk_full_error(flask.request.path)
            return error_response(full.status, full.message)
        log.error("internal error: %s", original)
        return error_response(500, "Internal Server Error")


class _UpgradedResponse(flask.Response):
    """What the view of an upgraded connection returns: the WSGI server
    must write nothing more on that socket (as flask-sock answers)."""

    mode = "gevent"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()
        return []


def _websocket_finished(ws: Any) -> flask.Response:
    resp = _UpgradedResponse()
    resp.mode = ws.mode
    return resp


def _bad_body(err: Exception) -> flask.Response:
    """400 for a request body the HTTP server could not parse; closes the connection."""
    log.info("malformed request body: %r", err)
    resp = error_response(400, "Bad Request")
    resp.headers["Connection"] = "close"
    return resp


def _install_cors(app: flask.Flask, server: Server) -> None:
    """CORS (``[authorization] cors_domains``, preflight) and the websocket
    Origin check, decided by the authorization component."""
    auth = server.auth

    @app.before_request
    def _cors_preflight_and_origin() -> Any:
        req = flask.request
        if req.path == "/websocket" and req.method == "GET":
            if not auth.websocket_origin_allowed(req.headers.get("Origin"), req.host):
                return flask.Response("Cross origin websockets not allowed", status=403,
                                      mimetype="text/html")
            return None
        if req.method == "OPTIONS":
            if req.url_rule is None:             # an unknown path: 404, as the reference
                return None
            origin = req.headers.get("Origin")
            if auth.cors_allowed(origin):
                resp = flask.Response(status=204)
                resp.headers.pop("Content-Type", None)
                resp.headers["Access-Control-Allow-Origin"] = origin
                resp.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
                resp.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
                return resp
            return error_response(405, "Method Not Allowed")
        return None

    @app.after_request
    def _cors_headers(resp: flask.Response) -> flask.Response:
        origin = flask.request.headers.get("Origin")
        if origin and "Access-Control-Allow-Origin" not in resp.headers \
                and auth.cors_allowed(origin):
            resp.headers["Access-Control-Allow-Origin"] = origin
        return resp


# Paths that authenticate on their own: the websocket upgrades (always
# accepted, as in Moonraker; the connection starts unauthenticated) and the
# index page, public in the reference.
AUTH_EXEMPT_PATHS = frozenset({"/websocket", "/klippysocket", "/"})


def public_paths(server: Server) -> set[str]:
    """The HTTP paths an anonymous caller may reach: those of the endpoints
    declared ``auth=False``, and ``/server/jsonrpc`` (checked per method)."""
    paths = {ep.path for ep in server.registry.endpoints
             if not ep.auth and HTTP in ep.transports}
    paths.add("/server/jsonrpc")
    return paths


def _install_auth(app: flask.Flask, server: Server) -> None:
    """Authentication before routing, as in Moonraker: every HTTP request
    but a CORS preflight (``OPTIONS``) and AUTH_EXEMPT_PATHS is
    authenticated before its route is looked up, so that from an untrusted
    address without credentials an unknown path or a wrong verb is a 401
    like any endpoint, and invalid credentials are a 401 everywhere
    (``Authorization.authenticate_request``).  Public paths are those of the
    endpoints declared ``auth=False`` and ``/server/jsonrpc`` (checked per
    method); the user found is kept in ``flask.g.http_user`` for the view."""
    public: set[str] = set()

    @app.before_request
    def _authenticate_before_routing() -> Any:
        req = flask.request
        if req.method == "OPTIONS" or req.path in AUTH_EXEMPT_PATHS:
            return None
        if not public:
            public.update(public_paths(server))
        try:
            flask.g.http_user = server.auth.authenticate_request(req, req.path in public)
        except ApiError as err:
            return error_response(err.status, err.message)
        return None
