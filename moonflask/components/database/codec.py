"""Encoding of the LMDB store: namespace and key names, JSON values,
the constants of the layout (see :mod:`.store`) and the key/namespace errors."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import orjson

from ...api import ApiError


SCHEMA_VERSION = 1
MOONRAKER_DB_FILE = "moonraker-sql.db"
BACKUP_SUBDIR = os.path.join("backup", "database")
LOCK_FILE = "moonflask.lock"

#: Readable, not writable, by clients: what Moonraker 0.11 refuses to write
#: (observed: tests/reference/dbns_*.json); ``update_manager`` joins them
#: when ``[update_manager]`` is configured, as with the reference.
PROTECTED_NAMESPACES = frozenset({"moonraker", "gcode_metadata", "announcements"})
#: Refused to clients, read or write, with a 403 (as Moonraker 0.11 refuses
#: its own bookkeeping namespace).
FORBIDDEN_NAMESPACES = frozenset({"database"})
#: moonflask's own stores of what Moonraker 0.11 keeps in SQL tables
#: (credentials, job history): clients see no such namespace, they are
#: not listed and every access is 404 "Namespace NS not found".
HIDDEN_NAMESPACES = frozenset({"authorized_users", "history"})
#: Namespaces whose keys are file paths, usernames, ids...: the
#: :class:`Namespace` wrapper does not split their string keys on dots
#: unless asked to (``parse_keys=True``).
LITERAL_KEY_NAMESPACES = frozenset({"gcode_metadata", "authorized_users", "history",
                                    "webcams", "announcements"})

MAX_DIRECT_KEY = 480            # bytes; longer keys are hashed
MAX_NAMESPACE_NAME = 500        # bytes (LMDB key limit 511, minus the prefix)
DEFAULT_MAX_DBS = 128
MAX_MAX_DBS = 1 << 15
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_NS_PREFIX = b"n:"
_META_DB = b"m:meta"
_LONG = 0xFF
_MISSING = object()


def _default_map_size() -> int:
    # Address space only (the file grows as pages are written); 32-bit
    # systems (Raspberry Pi OS armhf) have little of it.
    return (1 << 30) if sys.maxsize > 2 ** 32 else (64 << 20)


# -- encoding -------------------------------------------------------------------
def _enc_str(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _dumps(value: Any) -> bytes:
    # orjson is several times faster (a nested write re-encodes its whole
    # top-level value); the standard library handles what orjson refuses:
    # integers beyond 64 bits and lone surrogates.
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass")


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(bytes(raw).decode("utf-8", "surrogatepass"))


def _db_key(key: str) -> bytes:
    b = _enc_str(key)
    if 0 < len(b) <= MAX_DIRECT_KEY:
        return b
    return bytes([_LONG]) + hashlib.sha256(b).digest()


def _is_long(k: bytes) -> bool:
    return len(k) > 0 and k[0] == _LONG


def _pack(key: str, kb: bytes, value: Any) -> bytes:
    return _dumps([key, value]) if _is_long(kb) else _dumps(value)


def _unpack(kb: bytes, raw: bytes) -> tuple[str, Any]:
    if _is_long(kb):
        key, value = _loads(raw)
        return key, value
    return bytes(kb).decode("utf-8", "surrogatepass"), _loads(raw)


def _ns_dbname(namespace: str) -> bytes:
    if not isinstance(namespace, str):
        raise ApiError(f"Invalid namespace: {namespace!r}", 400)
    b = _NS_PREFIX + _enc_str(namespace)
    if len(b) - len(_NS_PREFIX) > MAX_NAMESPACE_NAME:
        raise ApiError("Namespace name too long", 400)
    return b


def _check_value(value: Any, top: bool = True) -> bytes:
    """JSON of a value; ApiError 400 when it cannot be stored.  A top-level
    int must fit int64 (Moonraker stores it so, and says exactly this)."""
    if top and isinstance(value, int) and not isinstance(value, bool) and \
            not INT64_MIN <= value <= INT64_MAX:
        raise ApiError(f"Error encoding val: {value}, type: {type(value)}", 400)
    try:
        return _dumps(value)
    except (TypeError, ValueError) as e:
        raise ApiError(f"Error encoding val: {value}, type: {type(value)}", 400) from e


def _nested_parent(top: Any, parts: list[str], namespace: str, key: Any) -> dict:
    """The object holding ``parts[-1]`` below ``top`` (``parts[1:-1]`` the
    path); ApiError 404 when a level or the last key is missing."""
    node = top
    for p in parts[1:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(p), dict):
            raise _not_found(namespace, key)
        node = node[p]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise _not_found(namespace, key)
    return node


def parse_key(key: str | list | tuple) -> list[str]:
    """Split a database key into its parts.

    Args:
        key: ``"a.b.c"`` (dot-separated) or ``["a", "b.c"]`` (each element
            one level, dots allowed inside).
    Returns:
        the list of parts, at least one.
    Raises:
        ApiError(400, "Invalid Key Format: '<key>'"): empty key, empty part
        (``"a..b"``, ``"a."``), empty list, a non-string part; an
        argument of another type gives "Value for argument 'key' is an
        invalid type: <type>" (Moonraker's messages).
    """
    if isinstance(key, str):
        parts = key.split(".")
    elif isinstance(key, (list, tuple)):
        parts = list(key)
        if any(not isinstance(p, str) for p in parts):
            raise ApiError(f"Invalid Key Format: '{_key_repr(key)}'", 400)
    else:
        raise ApiError(f"Value for argument 'key' is an invalid type: {type(key).__name__}", 400)
    if not parts or any(p == "" for p in parts):
        raise ApiError(f"Invalid Key Format: '{_key_repr(key)}'", 400)
    return parts


def _key_repr(key: Any) -> str:
    return str(list(key)) if isinstance(key, tuple) else str(key)


def _not_found(namespace: str, key: Any) -> ApiError:
    return ApiError(f"Key '{_key_repr(key)}' in namespace '{namespace}' not found", 404)


def _ns_not_found(namespace: str) -> ApiError:
    # Moonraker's message has no quotes around the name.
    return ApiError(f"Namespace {namespace} not found", 404)


# -- transactions -----------------------------------------------------------------
