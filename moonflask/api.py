"""The endpoint registry: one declaration per endpoint, served on every transport.

A blueprint declares an endpoint once::

    bp = ApiBlueprint("server", __name__)

    @bp.endpoint("/server/gcode_store", methods=["GET"])   # rpc: server.gcode_store
    def gcode_store(req: ApiRequest) -> dict: ...

`create_app()` turns each declaration into a Flask route (result wrapped as
``{"result": ...}``) and into a JSON-RPC method served by the websocket, the
unix socket, MQTT and ``POST /server/jsonrpc`` (see ``jsonrpc.py``).  Handlers
never look at the transport: they get an :class:`ApiRequest` whose ``args``
is an :class:`Args` (body arguments win over query arguments; query-string
type hints ``key:int|bool|float|json``) and raise :class:`ApiError` on bad
input.  Spec: web_api.md "HTTP API Overview", "JSON-RPC API Overview".
"""
from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import flask

from . import jsonutil

HTTP = "http"
WEBSOCKET = "websocket"
UNIX = "unix"
MQTT = "mqtt"
INTERNAL = "internal"
ALL_TRANSPORTS = frozenset({HTTP, WEBSOCKET, UNIX, MQTT, INTERNAL})
PERSISTENT_TRANSPORTS = frozenset({WEBSOCKET, UNIX, INTERNAL})


class ApiError(Exception):
    """An error reported to the client.

    Args:
        message: human-readable text, sent as ``error.message``.
        status: the HTTP status (400 bad argument, 401/403 auth, 404 missing,
            409 conflict, 422 checksum ...).  JSON-RPC uses it as the error
            code, except 404 which becomes -32601 (as Moonraker does).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- a full disk (issue 10 item 15) ------------------------------------------
NO_SPACE = "No space left on device"
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXTS = (NO_SPACE, "Disk quota exceeded", "[Errno 28]", "[Errno 122]",
                   "database or disk is full")     # the last: SQLite (backups)
LMDB_LOW_SPACE = 8 << 20      # bytes: below this, an LMDB write I/O error is a full disk
NO_SPACE_LOG_INTERVAL = 600.0   # seconds between two log lines about a full disk
_no_space_logged_at: float | None = None


def is_disk_full(err: BaseException, path: str | None = None) -> bool:
    """True when ``err`` says the file system is full.

    Recognises an OSError with errno ENOSPC/EDQUOT, an ApiError made by
    :func:`disk_full_error`, an error whose text carries the system's
    message (a metadata worker's reply, an LMDB error), and, when ``path``
    (a folder on the file system written to) is given, an LMDB "Input/output
    error": LMDB reports the short write of a full disk as EIO, so it counts
    as full when less than LMDB_LOW_SPACE bytes are free there.
    """
    if isinstance(err, ApiError):
        return err.status == 507 and err.message == NO_SPACE
    if isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(err)
    if any(t in text for t in _NO_SPACE_TEXTS):
        return True
    if path is not None and type(err).__module__.startswith("lmdb") \
            and "Input/output error" in text:
        try:
            return shutil.disk_usage(path).free < LMDB_LOW_SPACE
        except OSError:
            return False
    return False


def disk_full_error(where: str) -> ApiError:
    """The ApiError 507 "No space left on device" for a write that failed
    because the disk is full; logs a warning naming ``where`` (what was being
    written) once, then at most every NO_SPACE_LOG_INTERVAL seconds."""
    global _no_space_logged_at
    now = time.monotonic()
    if _no_space_logged_at is None or now - _no_space_logged_at >= NO_SPACE_LOG_INTERVAL:
        _no_space_logged_at = now
        logging.getLogger(__name__).warning(
            "%s: writing %s failed; writes are refused with 507 until space is freed",
            NO_SPACE, where)
    return ApiError(NO_SPACE, 507)


_REQUIRED = object()

_TRUE = ("true",)
_FALSE = ("false",)


class Args(Mapping):
    """The merged arguments of one request, with typed getters.

    Each getter takes ``(key, default)``; without a default a missing argument
    raises ``ApiError("No data for argument: KEY", 400)``.  A value that does
    not convert raises ``ApiError("Unable to convert argument [KEY] ...", 400)``.
    Spec: web_api.md "Query string type hints".
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Args({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        """Return a shallow copy of the arguments as a plain dict."""
        return dict(self._data)

    def _raw(self, key: str, default: Any) -> Any:
        if key in self._data:
            return self._data[key]
        if default is _REQUIRED:
            raise ApiError(f"No data for argument: {key}", 400)
        return default

    def _convert(self, key: str, default: Any, kind: type, conv: Callable[[Any], Any]) -> Any:
        value = self._raw(key, default)
        if value is default and default is not _REQUIRED:
            return default
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
        try:
            return conv(value)
        except (ValueError, TypeError):
            raise ApiError(
                f"Unable to convert argument [{key}] to {kind}: value received: {value}",
                400) from None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """The raw value of ``key`` (any JSON type), or ``default``."""
        return self._data.get(key, default)

    def require(self, key: str) -> Any:
        """The raw value of ``key``; raises ApiError 400 when absent."""
        return self._raw(key, _REQUIRED)

    def get_str(self, key: str, default: Any = _REQUIRED) -> str:
        """``key`` as a string (numbers are converted to text)."""
        def conv(v: Any) -> str:
            if isinstance(v, (dict, list)):
                raise TypeError
            return str(v)
        return self._convert(key, default, str, conv)

    def get_int(self, key: str, default: Any = _REQUIRED) -> int:
        """``key`` as an int (``"12"`` and ``12.0`` convert, ``"12x"`` is a 400)."""
        def conv(v: Any) -> int:
            if isinstance(v, float):
                if not v.is_integer():
                    raise ValueError
                return int(v)
            if isinstance(v, (dict, list)):
                raise TypeError
            return int(v)
        return self._convert(key, default, int, conv)

    def get_float(self, key: str, default: Any = _REQUIRED) -> float:
        """``key`` as a float."""
        def conv(v: Any) -> float:
            if isinstance(v, (dict, list)):
                raise TypeError
            return float(v)
        return self._convert(key, default, float, conv)

    def get_boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        """``key`` as a bool: JSON booleans, or the strings ``true``/``false``
        in any case."""
        def conv(v: Any) -> bool:
            if isinstance(v, str):
                low = v.strip().lower()
                if low in _TRUE:
                    return True
                if low in _FALSE:
                    return False
            raise ValueError
        return self._convert(key, default, bool, conv)

    def get_list(self, key: str, default: Any = _REQUIRED, sep: str = ",") -> list:
        """``key`` as a list; a string is split on ``sep`` (blank items dropped)."""
        def conv(v: Any) -> list:
            if isinstance(v, str):
                return [p.strip() for p in v.split(sep) if p.strip()]
            raise TypeError
        return self._convert(key, default, list, conv)

    def get_dict(self, key: str, default: Any = _REQUIRED) -> dict:
        """``key`` as an object; a string is parsed as JSON."""
        def conv(v: Any) -> dict:
            if isinstance(v, str):
                out = json.loads(v)
                if isinstance(out, dict):
                    return out
            raise TypeError
        return self._convert(key, default, dict, conv)


def parse_query_args(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Apply Moonraker's query-string type hints to ``(key, value)`` pairs.

    A key with one colon is ``name:hint``: ``int``, ``float`` and ``json``
    convert the value, and a value that does not convert keeps its raw
    string; ``bool`` is True for ``true`` in any case, else False; any other
    hint (``:str``, ``:foo``, ``:JSON``, empty) keeps the raw string under
    ``name``.  A key with no colon, or several, is kept as it is.  All as
    the reference does (tests/reference/dbns_hint_*.json).
    Returns a dict keyed by the name without its hint; a later pair wins.
    """
    out: dict[str, Any] = {}
    for key, value in items:
        parts = key.split(":")
        if len(parts) != 2:
            out[key] = value
            continue
        name, hint = parts
        converted: Any = value
        try:
            if hint == "int":
                converted = int(value)
            elif hint == "float":
                converted = float(value)
            elif hint == "bool":
                converted = value.lower() == "true"
            elif hint == "json":
                converted = json.loads(value)
        except ValueError:
            converted = value
        out[name] = converted
    return out


def json_body_args(raw: bytes) -> dict[str, Any]:
    """The arguments of an ``application/json`` request body: ``{}`` for an
    empty body.  Raises ApiError 400 for malformed JSON or a body that is
    not an object (web_api.md "HTTP API Overview")."""
    if not raw.strip():
        return {}
    try:
        body = jsonutil.loads(raw)
    except ValueError:
        raise ApiError("Error decoding JSON body", 400) from None
    if not isinstance(body, dict):
        raise ApiError("Request body must be a JSON object", 400)
    return body


@dataclass
class ApiRequest:
    """What a handler receives.

    Attributes:
        args: the merged arguments.
        method: the HTTP verb the endpoint was reached as (``GET``, ``POST``,
            ``DELETE``); JSON-RPC calls carry the verb their method name maps to.
        server: the :class:`moonflask.app.Server` holding every component.
        transport: one of ``http``, ``websocket``, ``unix``, ``mqtt``, ``internal``.
        connection: the calling persistent connection (websocket / unix socket),
            or None for HTTP and MQTT.
        user: the authenticated user record (a dict), or None.
        ip: the client's address, or None.
        http: the Flask request for HTTP calls (uploads, downloads), else None.
    """

    args: Args
    method: str
    server: Any
    transport: str
    connection: Any = None
    user: dict | None = None
    ip: str | None = None
    http: Any = None


Handler = Callable[[ApiRequest], Any]


@dataclass
class Endpoint:
    """One declared endpoint.

    ``rpc_methods`` maps each HTTP verb to its JSON-RPC method name.
    ``wrap`` is False for routes that answer with their own body (uploads,
    OctoPrint emulation).  ``auth`` False marks endpoints an unauthenticated
    client may reach (login, refresh_jwt, info ...).
    """

    path: str
    methods: tuple[str, ...]
    handler: Handler
    rpc_methods: dict[str, str]
    transports: frozenset[str]
    wrap: bool = True
    auth: bool = True
    component: str = ""


def derive_rpc_names(path: str, methods: Iterable[str]) -> dict[str, str]:
    """Moonraker's rule: ``/server/files/list`` -> ``server.files.list``; a path
    served by several verbs prefixes its last part with the verb
    (``server.database.get_item|post_item|delete_item``)."""
    methods = list(methods)
    parts = path.strip("/").split("/")
    if len(methods) == 1:
        return {methods[0]: ".".join(parts)}
    return {m: ".".join(parts[:-1] + [f"{m.lower()}_{parts[-1]}"]) for m in methods}


class ApiBlueprint(flask.Blueprint):
    """A Flask blueprint that also collects endpoint declarations.

    Plain Flask routes (downloads with a dynamic path) can still be added with
    ``route``; they must call ``server.auth`` themselves via ``http_user()``.
    """

    def __init__(self, name: str, import_name: str, component: str = "") -> None:
        super().__init__(name, import_name)
        self.component = component or name
        self.endpoints: list[Endpoint] = []

    def endpoint(self, path: str, methods: Iterable[str] = ("GET",), *,
                 rpc: str | Mapping[str, str] | None = None,
                 transports: Iterable[str] = ALL_TRANSPORTS,
                 wrap: bool = True, auth: bool = True) -> Callable[[Handler], Handler]:
        """Declare ``handler`` as the endpoint at ``path`` for ``methods``.

        Args:
            rpc: the JSON-RPC method name (one verb) or a verb->name mapping,
                when Moonraker's name differs from the derived one; ``""``
                for HTTP-only endpoints.
            transports: where it is served (websocket-only endpoints such as
                ``server.connection.identify`` pass ``PERSISTENT_TRANSPORTS``).
        """
        methods = tuple(m.upper() for m in methods)

        def deco(fn: Handler) -> Handler:
            if rpc is None:
                names = derive_rpc_names(path, methods)
            elif isinstance(rpc, str):
                names = {m: rpc for m in methods} if rpc else {}
            else:
                names = dict(rpc)
            self.endpoints.append(Endpoint(
                path, methods, fn, names, frozenset(transports), wrap, auth, self.component))
            return fn
        return deco


class Registry:
    """Every endpoint, by JSON-RPC method name and by HTTP path."""

    def __init__(self) -> None:
        self.by_rpc: dict[str, tuple[Endpoint, str]] = {}
        self.endpoints: list[Endpoint] = []

    def add(self, ep: Endpoint) -> None:
        """Register ``ep``; a duplicate JSON-RPC name raises ValueError."""
        self.endpoints.append(ep)
        for verb, name in ep.rpc_methods.items():
            if name in self.by_rpc:
                if self.by_rpc[name][0] is not ep:
                    raise ValueError(f"duplicate JSON-RPC method {name}")
                continue
            self.by_rpc[name] = (ep, verb)

    def lookup(self, method: str, transport: str) -> tuple[Endpoint, str] | None:
        """The endpoint and verb serving JSON-RPC ``method`` on ``transport``, or None."""
        found = self.by_rpc.get(method)
        if found is None or transport not in found[0].transports:
            return None
        return found


# -- HTTP response helpers (shared by the transports and the few streaming routes)
def error_response(status: int, message: str) -> flask.Response:
    """Moonraker's HTTP error body ``{"error": {"code", "message"}}``."""
    return flask.Response(jsonutil.dumps({"error": {"code": status, "message": message}}),
                          status=status, mimetype="application/json")


def json_response(obj: Any, status: int = 200) -> flask.Response:
    """``obj`` encoded as an application/json response."""
    return flask.Response(jsonutil.dumps(obj), status=status, mimetype="application/json")
