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
import time
from typing import Any

import flask
import gevent
from flask_sock import Sock
from gevent.server import StreamServer
from werkzeug.middleware.proxy_fix import ProxyFix

from . import MOONRAKER_VERSION, jsonutil
from .api import (HTTP, ApiError, ApiRequest, Args, Endpoint, Registry, parse_query_args)
from .auth import load_authorization
from .config import ConfigFile
from .connections import ConnectionManager, UnixConnection, WebsocketConnection
from .data_store import DataStore
from .jsonrpc import Dispatcher
from .klippy import Klippy
from .logs import LogManager
from .notify import EventBus
from .workers import Supervisor

log = logging.getLogger(__name__)

# Core blueprints, always registered.
CORE_BLUEPRINTS = ("moonflask.blueprints.server", "moonflask.blueprints.printer",
                   "moonflask.blueprints.access")

# Components, in load order: Moonraker's name -> (module, the config section
# that enables it, or None when always loaded).  A module provides
# ``load_component(server, section) -> object`` and ``blueprint`` (an
# ApiBlueprint, or None).
OPTIONAL_COMPONENTS: dict[str, tuple[str, str | None]] = {
    "database": ("moonflask.database_api", None),
    "file_manager": ("moonflask.files.manager", None),
    "machine": ("moonflask.machine", None),
    "proc_stats": ("moonflask.proc_stats", None),
    "job_state": ("moonflask.job_state", None),
    "job_queue": ("moonflask.job_queue", None),
    "history": ("moonflask.history", "history"),
    "announcements": ("moonflask.announcements", None),
    "webcam": ("moonflask.webcams", None),
    "extensions": ("moonflask.extensions", None),
    "notifier": ("moonflask.notifiers", None),
    "octoprint_compat": ("moonflask.octoprint", "octoprint_compat"),
    "update_manager": ("moonflask.components.update_manager", "update_manager"),
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
    def load_optional_components(self, app: flask.Flask) -> None:
        """Load each optional component whose section is configured and
        register its blueprint; a failing one is logged and reported in
        ``failed_components``."""
        for name, (modname, section) in OPTIONAL_COMPONENTS.items():
            if section is not None and not self.config.has_section(section):
                continue
            try:
                mod = importlib.import_module(modname)
                cfg = self.config.section(section) if section else None
                self.components[name] = mod.load_component(self, cfg)
                if mod.blueprint is not None:
                    register_blueprint(app, self, mod.blueprint)
            except Exception as err:  # keep serving without it
                log.exception("component %s failed to load", name)
                self.failed_components.append(name)
                self.config.runtime_warnings.append(f"[{section or name}]: {err}")

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
def error_response(status: int, message: str) -> flask.Response:
    """Moonraker's HTTP error body ``{"error": {"code", "message"}}``."""
    return flask.Response(jsonutil.dumps({"error": {"code": status, "message": message}}),
                          status=status, mimetype="application/json")


def json_response(obj: Any, status: int = 200) -> flask.Response:
    """``obj`` encoded as an application/json response."""
    return flask.Response(jsonutil.dumps(obj), status=status, mimetype="application/json")


def http_args(request: flask.Request) -> dict[str, Any]:
    """Query arguments (with type hints) overlaid with body arguments (JSON
    object or url-encoded form).  A malformed JSON body is a 400."""
    args = parse_query_args(request.args.items(multi=True))
    ctype = request.mimetype
    if ctype == "application/json":
        raw = request.get_data(cache=True)
        if raw.strip():
            try:
                body = jsonutil.loads(raw)
            except ValueError:
                raise ApiError("Error decoding JSON body", 400) from None
            if not isinstance(body, dict):
                raise ApiError("Request body must be a JSON object", 400)
            args.update(body)
    elif ctype == "application/x-www-form-urlencoded":
        args.update(request.form.to_dict())
    return args


def make_view(server: Server, ep: Endpoint):
    """The Flask view serving endpoint ``ep`` over HTTP."""
    def view(**_path_args: Any) -> flask.Response:
        request = flask.request
        try:
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
    for modname in CORE_BLUEPRINTS:
        register_blueprint(app, server, importlib.import_module(modname).blueprint)
    server.load_optional_components(app)
    _install_transports(app, server)
    server.auth.install(app)
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
    sock = Sock(app)

    @app.before_request
    def _websocket_admission() -> Any:
        # Decided before the upgrade, so a refusal is a plain HTTP error.
        if flask.request.path != "/websocket":
            return None
        if server.connections.websocket_limit_reached():
            return error_response(503, "Maximum Number of Websocket Connections Reached")
        try:
            flask.g.ws_user = server.auth.authenticate_websocket(flask.request)
        except ApiError as err:
            return error_response(err.status, err.message)
        return None

    @sock.route("/websocket")
    def websocket(ws: Any) -> None:
        request = flask.request
        conn = WebsocketConnection(server.connections, ws, request.remote_addr,
                                   flask.g.get("ws_user"))
        server.connections.add(conn)
        try:
            while not conn.closed:
                msg = ws.receive()
                if msg is None:
                    break
                conn.handle_frame(msg)
        except Exception as err:  # ConnectionClosed and socket errors end the session
            log.debug("websocket %s closed: %s", conn.uid, err)
        finally:
            conn.close()

    @app.route("/server/jsonrpc", methods=["POST"])
    def http_jsonrpc() -> flask.Response:
        request = flask.request
        try:
            user = server.auth.authenticate_http(request, None)
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

    @app.errorhandler(500)
    def internal(err: Any) -> flask.Response:
        log.error("internal error: %s", getattr(err, "original_exception", err))
        return error_response(500, "Internal Server Error")
