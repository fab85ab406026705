"""The LMDB storage layer: namespaces of JSON values.

Spec: web_api.md "Database APIs" (the HTTP/JSON-RPC endpoints live in
``database_api``; this module is the component they call).

Layout of ``DATA_PATH/database/`` (an LMDB environment, ``data.mdb`` +
``lock.mdb``):

- one named sub-database per namespace, named ``b"n:" + namespace`` (UTF-8);
  its keys are the namespace's top-level keys (UTF-8), its values the JSON
  (UTF-8) of each top-level value.  A key longer than
  :data:`MAX_DIRECT_KEY` bytes is stored under ``b"\\xff" + sha256(key)`` with
  the value ``[key, value]`` (LMDB keys are limited to 511 bytes; Moonraker
  has no such limit).  Keys come back in byte order (as Moonraker's
  ``ORDER BY key``), long keys last;
- ``b"m:meta"``: moonflask's own bookkeeping (schema version, whether the
  Moonraker import ran).  Never visible as a namespace.

Durability: ``sync=True, metasync=True``: when a write method returns, the
data is on disk; a crash (kill -9, power loss) at any instant leaves the old
or the new state.  Writes are serialized by a lock and never yield inside a
transaction (gevent greenlets share one OS thread); the map grows by doubling
on ``MapFullError`` and the environment is reopened with more sub-database
slots on ``DbsFullError``.  Use a :class:`Database` from the gevent hub's
thread only (not from threadpool threads): growing the map remaps it.

Client policy (Moonraker 0.11.0, observed): *protected* namespaces are
readable but not writable by clients (``403 "Write access to namespace 'X'
is forbidden"``), *forbidden* ones are neither readable nor writable nor
listed (``403 "Read/Write access to namespace 'X' is forbidden"``); see
:meth:`Database.check_client_access`.

Command line (the server must be stopped for ``restore``)::

    python -m moonflask.components.database backup  DATA_PATH OUT_FILE
    python -m moonflask.components.database restore DATA_PATH IN_FILE
    python -m moonflask.components.database dump    DATA_PATH [NAMESPACE]

Backups are SQLite files in Moonraker 0.11's schema (see
``database_migrate``): portable across CPU architectures, restorable by
moonflask and by Moonraker.  On first start with an empty database, an
existing ``DATA_PATH/database/moonraker-sql.db`` is imported.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

import gevent
import gevent.event
import lmdb
import orjson

from ...api import ApiError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MOONRAKER_DB_FILE = "moonraker-sql.db"
BACKUP_SUBDIR = os.path.join("backup", "database")
LOCK_FILE = "moonflask.lock"

#: Readable, not writable, by clients (Moonraker 0.11 protects
#: announcements, gcode_metadata, moonraker and, with [update_manager],
#: update_manager; the spec also reserves history).
PROTECTED_NAMESPACES = frozenset({"moonraker", "gcode_metadata", "history", "announcements",
                                  "update_manager"})
#: Invisible to clients (Moonraker 0.11 forbids "database"; moonflask keeps
#: its credentials in "authorized_users").
FORBIDDEN_NAMESPACES = frozenset({"database", "authorized_users"})
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
class _Txn:
    """A write transaction in progress (internal)."""

    def __init__(self, db: "Database", txn: lmdb.Transaction) -> None:
        self.db = db
        self.txn = txn
        self.opened: dict[bytes, Any] = {}
        self.dropped: set[bytes] = set()

    def dbi(self, name: bytes, create: bool) -> Any:
        if name in self.opened:
            return self.opened[name]
        if name not in self.dropped:
            handle = self.db._dbis.get(name)
            if handle is not None:
                return handle
        if not create and self.txn.get(name) is None:
            return None
        handle = self.db._env.open_db(name, txn=self.txn, create=create)
        self.opened[name] = handle
        self.dropped.discard(name)
        return handle

    def drop(self, name: bytes) -> None:
        handle = self.dbi(name, create=False)
        if handle is None:
            return
        self.txn.drop(handle, delete=True)
        self.opened.pop(name, None)
        self.dropped.add(name)


def _run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in gevent's threadpool: the hub keeps serving other
    greenlets while LMDB fsyncs (the GIL is released during the commit)."""
    return gevent.get_hub().threadpool.apply(fn, args)


class _WriteJob:
    """One write waiting for the group commit (internal)."""

    __slots__ = ("fn", "result", "error", "_done")

    def __init__(self, fn: Callable[[_Txn], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = gevent.event.Event()

    def wait(self) -> None:
        self._done.wait()

    def finish(self) -> None:
        self._done.set()


class Database:
    """The namespaces store.

    Args:
        path: the database folder (``DATA_PATH/database``); created if absent.
        readonly: open read-only (backups, dumps); no import, no writes.
        exclusive: fail (``DatabaseLocked``) unless no other process has the
            database open (used by ``restore``); otherwise a shared lock is
            held so that an offline restore refuses to run beside a server.
        map_size: initial LMDB map size in bytes (grows on demand).
        max_dbs: initial number of sub-database slots (grows on demand).
        import_moonraker: on the first open of an empty database, import
            ``path/moonraker-sql.db`` when it exists.
        writemap: LMDB ``MDB_WRITEMAP`` (about 2x the commits per second,
            same durability; but the data file's apparent size becomes the
            map size, a sparse 1 GiB file that alarms users).  Off by default.
    Raises:
        DatabaseLocked: ``exclusive`` and another process has it open.
        lmdb.Error: the environment cannot be opened.
    """

    def __init__(self, path: str, *, readonly: bool = False, exclusive: bool = False,
                 map_size: int | None = None, max_dbs: int = DEFAULT_MAX_DBS,
                 import_moonraker: bool = True, writemap: bool = False) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.readonly = readonly
        self._writemap = writemap and not readonly
        if not readonly:
            os.makedirs(self.path, exist_ok=True)
        self._lockf = self._take_lock(exclusive)
        self._wlock = threading.RLock()
        self._pending: list[_WriteJob] = []
        self._committing = False
        self._max_dbs = max_dbs
        self._dbis: dict[bytes, Any] = {}
        self._registered: set[str] = set()
        self._protected: set[str] = set(PROTECTED_NAMESPACES)
        self._forbidden: set[str] = set(FORBIDDEN_NAMESPACES)
        self._wrappers: dict[tuple[str, bool], Namespace] = {}
        data_file = os.path.join(self.path, "data.mdb")
        size = os.path.getsize(data_file) if os.path.exists(data_file) else 0
        self._map_size = max(map_size or _default_map_size(), size * 2)
        self._env: Any = None
        self._open_env()
        self.imported: dict[str, Any] | None = None
        if not readonly:
            self._init_meta(import_moonraker)

    # -- environment ------------------------------------------------------------
    def _take_lock(self, exclusive: bool) -> Any:
        lock_path = os.path.join(self.path, LOCK_FILE)
        if self.readonly and not os.path.exists(lock_path):
            return None
        try:
            f = open(lock_path, "a+")
        except OSError:
            return None
        try:
            fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            f.close()
            if exclusive:
                raise DatabaseLocked(f"{self.path} is in use by another process "
                                     "(stop moonflask first)") from None
            raise DatabaseLocked(f"{self.path} is locked for a restore") from None
        return f

    def _open_env(self) -> None:
        self._env = lmdb.open(self.path, subdir=True, readonly=self.readonly,
                              map_size=self._map_size, max_dbs=self._max_dbs, lock=True,
                              sync=True, metasync=True, writemap=self._writemap, map_async=False,
                              create=not self.readonly, max_readers=126)
        self._dbis = {}
        if not self.readonly:
            try:
                self._env.reader_check()    # clear reader slots of dead processes
            except lmdb.Error:
                pass

    def close(self) -> None:
        """Close the environment and release the lock.  Idempotent."""
        with self._wlock:
            if self._env is not None:
                self._env.close()
                self._env = None
            self._dbis = {}
            if self._lockf is not None:
                self._lockf.close()
                self._lockf = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _begin(self, write: bool = False) -> Any:
        if self._env is None:
            raise ApiError("Database is closed", 503)
        try:
            return self._env.begin(write=write)
        except lmdb.MapResizedError:
            # Another process (e.g. a restore) grew the map: adopt its size.
            self._env.set_mapsize(0)
            self._map_size = self._env.info()["map_size"]
            return self._env.begin(write=write)

    def _grow_map(self) -> None:
        self._map_size *= 2
        log.info("Database map full: growing to %d MiB", self._map_size >> 20)
        self._env.set_mapsize(self._map_size)

    def _grow_dbs(self) -> None:
        if self._max_dbs >= MAX_MAX_DBS:
            raise ApiError("Too many namespaces", 507)
        self._max_dbs = min(self._max_dbs * 2, MAX_MAX_DBS)
        log.info("Database: reopening with max_dbs=%d", self._max_dbs)
        self._env.close()
        self._open_env()

    def _write(self, fn: Callable[[_Txn], Any]) -> Any:
        """Run ``fn(txn)`` in a write transaction and commit it durably.

        ``fn`` must not yield nor have side effects outside the transaction:
        it may be re-run after the map or the sub-database table grows.

        Group commit: writes requested while a commit is in flight are
        gathered and committed together, each in a nested transaction of its
        own (a failing one is rolled back alone), with one fsync for the
        batch.  Under gevent the transaction runs in the hub's threadpool, so
        the fsync does not stall other greenlets; the caller returns once its
        write is on disk.
        """
        if self.readonly:
            raise ApiError("Database is read-only", 500)
        job = _WriteJob(fn)
        self._pending.append(job)
        if self._committing:
            job.wait()
        else:
            self._committing = True
            try:
                while self._pending:
                    batch, self._pending = self._pending, []
                    self._commit_batch(batch)
            finally:
                self._committing = False
        if job.error is not None:
            raise job.error
        return job.result

    def _commit_batch(self, batch: list["_WriteJob"]) -> None:
        with self._wlock:
            for _ in range(64):
                outcome = _run_blocking(self._commit_once, batch)
                if outcome == "map_full":
                    self._grow_map()
                elif outcome == "dbs_full":
                    self._grow_dbs()
                else:
                    break
            else:
                for job in batch:
                    job.error = ApiError("Database write failed", 500)
            for job in batch:
                job.finish()

    def _commit_once(self, batch: list["_WriteJob"]) -> str:
        """One attempt at the whole batch (runs in a worker thread under
        gevent).  Returns ``ok``, ``map_full`` or ``dbs_full``."""
        parent = self._begin(write=True)
        opened: dict[bytes, Any] = {}
        dropped: set[bytes] = set()
        try:
            for job in batch:
                t = _Txn(self, self._env.begin(write=True, parent=parent))
                t.opened.update(opened)
                try:
                    job.result = job.fn(t)
                    job.error = None
                    t.txn.commit()
                except (lmdb.MapFullError, lmdb.DbsFullError):
                    t.txn.abort()
                    raise
                except BaseException as err:  # this write fails alone
                    t.txn.abort()
                    job.error = err
                    continue
                for name in t.dropped:
                    opened.pop(name, None)
                dropped |= t.dropped
                dropped -= set(t.opened)
                opened.update(t.opened)
            parent.commit()
        except lmdb.MapFullError:
            parent.abort()
            return "map_full"
        except lmdb.DbsFullError:
            parent.abort()
            return "dbs_full"
        except BaseException:
            parent.abort()
            raise
        for name in dropped:
            self._dbis.pop(name, None)
        self._dbis.update(opened)
        return "ok"

    def _read_dbi(self, name: bytes) -> Any:
        """The handle of an existing sub-database, or None."""
        handle = self._dbis.get(name)
        if handle is not None:
            return handle
        if self._env is None:
            raise ApiError("Database is closed", 503)
        with self._begin() as txn:
            if txn.get(name) is None:
                return None
        try:
            handle = self._env.open_db(name, create=False)
        except lmdb.NotFoundError:
            return None
        except lmdb.DbsFullError:
            with self._wlock:
                self._grow_dbs()
            return self._read_dbi(name)
        self._dbis[name] = handle
        return handle

    def _read(self, name: bytes, fn: Callable[[Any, Any], Any], missing: Callable[[], Any]
              ) -> Any:
        dbi = self._read_dbi(name)
        if dbi is None:
            return missing()
        with self._begin() as txn:
            return fn(txn, dbi)

    # -- meta / first start ---------------------------------------------------------
    def _meta_get(self, key: str, default: Any = None) -> Any:
        dbi = self._read_dbi(_META_DB)
        if dbi is None:
            return default
        with self._begin() as txn:
            raw = txn.get(_enc_str(key), db=dbi)
        return default if raw is None else _loads(raw)

    def migration_info(self) -> dict[str, Any] | None:
        """What the first start imported from Moonraker:
        ``{"source": path, "namespaces": [...], "time": t}``, or None."""
        return self._meta_get("imported")

    def _init_meta(self, import_moonraker: bool) -> None:
        if self._meta_get("schema_version") is not None:
            return
        src = os.path.join(self.path, MOONRAKER_DB_FILE)
        data: dict[str, dict[str, Any]] = {}
        info: dict[str, Any] | None = None
        if import_moonraker and not self.list_namespaces() and os.path.isfile(src):
            try:
                from . import migration as migrate
                data = migrate.read_sqlite(src)
                info = {"source": src, "namespaces": sorted(data),
                        "time": datetime.datetime.now().timestamp()}
                log.info("Importing Moonraker database %s: %s", src,
                         ", ".join(f"{ns} ({len(v)})" for ns, v in sorted(data.items())))
            except migrate.FormatError as e:
                log.error("Cannot import %s: %s", src, e)
                data = {}

        def fn(t: _Txn) -> None:
            self._put_all(t, data, replace=False)
            meta = t.dbi(_META_DB, create=True)
            t.txn.put(b"schema_version", _dumps(SCHEMA_VERSION), db=meta)
            if info is not None:
                t.txn.put(b"imported", _dumps(info), db=meta)
        self._write(fn)
        self.imported = info

    def _put_all(self, t: _Txn, data: dict[str, dict[str, Any]], replace: bool) -> None:
        if replace:
            for ns in self._list(t.txn):
                t.drop(_ns_dbname(ns))
        for ns, items in data.items():
            if not items:
                continue
            dbi = t.dbi(_ns_dbname(ns), create=True)
            for key, value in items.items():
                kb = _db_key(key)
                t.txn.put(kb, _pack(key, kb, value), db=dbi)

    # -- namespaces ---------------------------------------------------------------
    @staticmethod
    def _list(txn: Any) -> list[str]:
        out = []
        cur = txn.cursor()
        if cur.set_range(_NS_PREFIX):
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(_NS_PREFIX):
                    break
                out.append(k[len(_NS_PREFIX):].decode("utf-8", "surrogatepass"))
        return out

    def list_namespaces(self, client: bool = False) -> list[str]:
        """The namespaces, in byte order of their names.

        Args:
            client: leave out the forbidden namespaces (what
                ``server.database.list`` shows).
        Returns:
            ``["fluidd", "moonraker", ...]``
        """
        with self._begin() as txn:
            names = self._list(txn)
        if client:
            names = [n for n in names if n not in self._forbidden]
        return names

    def has_namespace(self, namespace: str) -> bool:
        """True when ``namespace`` exists (even empty, when registered)."""
        return self._read_dbi(_ns_dbname(namespace)) is not None

    def register_namespace(self, namespace: str, *, protected: bool = False,
                           forbidden: bool = False) -> None:
        """Create ``namespace`` if absent and keep it even when emptied (as
        Moonraker keeps the namespaces its components register, listed with
        an empty value).

        Args:
            protected: clients may read, not write it.
            forbidden: clients may neither read nor write nor list it.
        """
        name = _ns_dbname(namespace)
        self._registered.add(namespace)
        if protected:
            self._protected.add(namespace)
        if forbidden:
            self._forbidden.add(namespace)
        if self.readonly or self._read_dbi(name) is not None:
            return
        self._write(lambda t: t.dbi(name, create=True))

    def namespace(self, namespace: str, parse_keys: bool | None = None, *,
                  protected: bool = False, forbidden: bool = False) -> "Namespace":
        """A :class:`Namespace` wrapper for a component; registers the
        namespace (see :meth:`register_namespace`).

        Args:
            parse_keys: split string keys on dots (``"a.b"`` -> nested);
                default False for :data:`LITERAL_KEY_NAMESPACES` (file paths,
                usernames, ids), True otherwise.  List keys are always nested.
        """
        if parse_keys is None:
            parse_keys = namespace not in LITERAL_KEY_NAMESPACES
        self.register_namespace(namespace, protected=protected, forbidden=forbidden)
        w = self._wrappers.get((namespace, parse_keys))
        if w is None:
            w = self._wrappers[(namespace, parse_keys)] = Namespace(self, namespace, parse_keys)
        return w

    # -- client policy --------------------------------------------------------------
    def check_client_access(self, namespace: str, write: bool) -> None:
        """Apply the client policy; call it BEFORE validating the key (Moonraker
        answers 403 even when the key is missing or malformed).

        Raises:
            ApiError(403, "Read/Write access to namespace 'X' is forbidden"):
                forbidden namespace (read or write).
            ApiError(403, "Write access to namespace 'X' is forbidden"):
                protected namespace and ``write``.
        """
        if namespace in self._forbidden:
            raise ApiError(f"Read/Write access to namespace '{namespace}' is forbidden", 403)
        if write and namespace in self._protected:
            raise ApiError(f"Write access to namespace '{namespace}' is forbidden", 403)

    def is_protected(self, namespace: str) -> bool:
        """True when clients may read but not write ``namespace``."""
        return namespace in self._protected

    def is_forbidden(self, namespace: str) -> bool:
        """True when clients may not see ``namespace`` at all."""
        return namespace in self._forbidden

    # -- items ------------------------------------------------------------------------
    def get_item(self, namespace: str, key: Any = None, default: Any = _MISSING) -> Any:
        """Read a value (``server.database.get_item``).

        Args:
            namespace: the namespace.
            key: None for the whole namespace; ``"a.b.c"`` or ``["a", "b.c"]``.
            default: returned instead of raising when missing.
        Returns:
            the value; for ``key=None`` a dict ``{top_key: value}`` in key
            order (``{}`` for a registered empty namespace).
        Raises:
            ApiError(404, "Namespace X not found"): ``key`` None, no namespace.
            ApiError(404, "Key 'a' in namespace 'X' not found"): the
                top-level key (first part) is missing (or the namespace is).
            ApiError(404, "Key '<key as given>' in namespace 'X' not found"):
                a nested part is missing or its parent is not an object
                (a list key is shown as ``['a', 'b.c']``).
            ApiError(400, "Invalid Key Format: ..."): see :func:`parse_key`.
        """
        name = _ns_dbname(namespace)
        if key is None:
            def whole(txn: Any, dbi: Any) -> dict:
                return dict(_unpack(k, v) for k, v in txn.cursor(db=dbi))

            def no_ns() -> Any:
                if default is not _MISSING:
                    return default
                raise _ns_not_found(namespace)
            return self._read(name, whole, no_ns)
        parts = parse_key(key)
        return self._get_parts(namespace, name, parts, key, default)

    def _get_parts(self, namespace: str, name: bytes, parts: list[str], key: Any,
                   default: Any) -> Any:
        def one(txn: Any, dbi: Any) -> Any:
            kb = _db_key(parts[0])
            raw = txn.get(kb, db=dbi)
            return _MISSING if raw is None else _unpack(kb, raw)[1]
        value = self._read(name, one, lambda: _MISSING)
        if value is _MISSING:
            if default is not _MISSING:
                return default
            raise _not_found(namespace, parts[0])
        for p in parts[1:]:
            if not isinstance(value, dict) or p not in value:
                if default is not _MISSING:
                    return default
                raise _not_found(namespace, key)
            value = value[p]
        return value

    def insert_item(self, namespace: str, key: Any, value: Any) -> Any:
        """Store ``value`` at ``key`` (``server.database.post_item``),
        creating the namespace and every missing parent; a parent that is not
        an object is replaced by one (as Moonraker does, with a warning).

        Returns:
            ``value`` (the result's ``value`` field).
        Raises:
            ApiError(400, "Invalid Key Format: ..."): see :func:`parse_key`.
            ApiError(400, "Error encoding val: V, type: <class 'int'>"): a
                top-level int outside int64, or a value that is not JSON.
        """
        return self._insert(namespace, parse_key(key), value)

    def _insert(self, namespace: str, parts: list[str], value: Any) -> Any:
        name = _ns_dbname(namespace)
        if len(parts) == 1:
            raw = _check_value(value)
            kb = _db_key(parts[0])
            if _is_long(kb):
                raw = _dumps([parts[0], value])

            def put(t: _Txn) -> None:
                t.txn.put(kb, raw, db=t.dbi(name, create=True))
            self._write(put)
            return value
        _check_value(value, top=False)

        def put_nested(t: _Txn) -> None:
            dbi = t.dbi(name, create=True)
            kb = _db_key(parts[0])
            old = t.txn.get(kb, db=dbi)
            top = _unpack(kb, old)[1] if old is not None else {}
            if not isinstance(top, dict):
                log.warning("Key %s in namespace %s holds a %s: overwriting with an object",
                            parts[0], namespace, type(top).__name__)
                top = {}
            node = top
            for p in parts[1:-1]:
                nxt = node.get(p)
                if not isinstance(nxt, dict):
                    nxt = node[p] = {}
                node = nxt
            node[parts[-1]] = value
            t.txn.put(kb, _pack(parts[0], kb, top), db=dbi)
        self._write(put_nested)
        return value

    def update_item(self, namespace: str, key: Any, value: Any) -> Any:
        """Update an existing value: an object updated with an object is
        merged (top level of ``value`` wins), anything else is replaced.

        Returns:
            the stored value after the update.
        Raises:
            ApiError(404, ...): the key does not exist (messages as
                :meth:`get_item`).
            ApiError(400, ...): as :meth:`insert_item`.
        """
        parts = parse_key(key)
        name = _ns_dbname(namespace)
        _check_value(value, top=len(parts) == 1)

        def upd(t: _Txn) -> Any:
            dbi, kb, top = self._load_top(t, namespace, name, parts[0])
            if len(parts) == 1:
                new = dict(top, **value) if isinstance(top, dict) and isinstance(value, dict) \
                    else value
                t.txn.put(kb, _pack(parts[0], kb, new), db=dbi)
                return new
            node = _nested_parent(top, parts, namespace, key)
            cur = node[parts[-1]]
            node[parts[-1]] = dict(cur, **value) if isinstance(cur, dict) and \
                isinstance(value, dict) else value
            t.txn.put(kb, _pack(parts[0], kb, top), db=dbi)
            return node[parts[-1]]
        return self._write(upd)

    def delete_item(self, namespace: str, key: Any, drop_empty: bool = True) -> Any:
        """Delete the value at ``key`` (``server.database.delete_item``).
        Deleting a nested key leaves its (possibly empty) parents; deleting
        the last top-level key drops the namespace unless it is registered.

        Args:
            drop_empty: False keeps an emptied namespace.
        Returns:
            the deleted value.
        Raises:
            ApiError(404, ...) / ApiError(400, ...): as :meth:`get_item`.
        """
        parts = parse_key(key)
        name = _ns_dbname(namespace)

        def rm(t: _Txn) -> Any:
            dbi, kb, top = self._load_top(t, namespace, name, parts[0])
            if len(parts) == 1:
                t.txn.delete(kb, db=dbi)
                if drop_empty and namespace not in self._registered and \
                        t.txn.stat(dbi)["entries"] == 0:
                    t.drop(name)
                return top
            node = _nested_parent(top, parts, namespace, key)
            deleted = node.pop(parts[-1])
            t.txn.put(kb, _pack(parts[0], kb, top), db=dbi)
            return deleted
        return self._write(rm)

    @staticmethod
    def _load_top(t: _Txn, namespace: str, name: bytes, top_key: str) -> tuple[Any, bytes, Any]:
        """``(dbi, encoded key, value)`` of a top-level key inside write
        transaction ``t``; ApiError 404 when the namespace or key is missing."""
        dbi = t.dbi(name, create=False)
        kb = _db_key(top_key)
        old = t.txn.get(kb, db=dbi) if dbi is not None else None
        if old is None:
            raise _not_found(namespace, top_key)
        return dbi, kb, _unpack(kb, old)[1]

    # -- whole-namespace helpers ----------------------------------------------------
    def ns_keys(self, namespace: str) -> list[str]:
        """Top-level keys of ``namespace`` (``[]`` when it does not exist)."""
        def keys(txn: Any, dbi: Any) -> list[str]:
            out = []
            for k, v in txn.cursor(db=dbi):
                out.append(_unpack(k, v)[0] if _is_long(k) else
                           bytes(k).decode("utf-8", "surrogatepass"))
            return out
        return self._read(_ns_dbname(namespace), keys, list)

    def ns_items(self, namespace: str) -> list[tuple[str, Any]]:
        """``[(key, value), ...]`` of ``namespace`` (``[]`` when absent)."""
        return self._read(_ns_dbname(namespace),
                          lambda txn, dbi: [_unpack(k, v) for k, v in txn.cursor(db=dbi)], list)

    def ns_length(self, namespace: str) -> int:
        """Number of top-level keys (0 when the namespace does not exist)."""
        return self._read(_ns_dbname(namespace), lambda txn, dbi: txn.stat(dbi)["entries"],
                          lambda: 0)

    def get_batch(self, namespace: str, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the top-level ``keys`` that exist (literal
        keys, no dot parsing)."""
        keys = list(keys)

        def get(txn: Any, dbi: Any) -> dict[str, Any]:
            out = {}
            for key in keys:
                kb = _db_key(key)
                raw = txn.get(kb, db=dbi)
                if raw is not None:
                    out[key] = _unpack(kb, raw)[1]
            return out
        return self._read(_ns_dbname(namespace), get, dict)

    def insert_batch(self, namespace: str, items: dict[str, Any]) -> None:
        """Store several top-level keys (literal, no dot parsing) in ONE
        transaction (one fsync).

        Raises:
            ApiError(400, ...): a value cannot be encoded (nothing stored).
        """
        encoded = []
        for key, value in items.items():
            if not isinstance(key, str):
                raise ApiError(f"Invalid Key Format: '{key}'", 400)
            kb = _db_key(key)
            _check_value(value)
            encoded.append((kb, _pack(key, kb, value)))
        if not encoded:
            return
        name = _ns_dbname(namespace)

        def put(t: _Txn) -> None:
            dbi = t.dbi(name, create=True)
            for kb, raw in encoded:
                t.txn.put(kb, raw, db=dbi)
        self._write(put)

    def delete_batch(self, namespace: str, keys: Iterable[str]) -> dict[str, Any]:
        """Delete several top-level keys (literal) in one transaction; missing
        keys are ignored.  Drops the namespace when emptied, unless registered.

        Returns:
            ``{key: deleted_value}`` for the keys that existed.
        """
        keys = list(keys)
        name = _ns_dbname(namespace)
        out: dict[str, Any] = {}

        def rm(t: _Txn) -> None:
            out.clear()
            dbi = t.dbi(name, create=False)
            if dbi is None:
                return
            for key in keys:
                kb = _db_key(key)
                raw = t.txn.get(kb, db=dbi)
                if raw is not None:
                    out[key] = _unpack(kb, raw)[1]
                    t.txn.delete(kb, db=dbi)
            if out and namespace not in self._registered and t.txn.stat(dbi)["entries"] == 0:
                t.drop(name)
        self._write(rm)
        return out

    def clear_namespace(self, namespace: str) -> None:
        """Delete every key of ``namespace``; it is dropped unless registered."""
        name = _ns_dbname(namespace)

        def clear(t: _Txn) -> None:
            dbi = t.dbi(name, create=False)
            if dbi is None:
                return
            if namespace in self._registered:
                t.txn.drop(dbi, delete=False)
            else:
                t.drop(name)
        self._write(clear)

    def drop_namespace(self, namespace: str) -> None:
        """Remove ``namespace`` and everything in it (no error when absent)."""
        name = _ns_dbname(namespace)
        self._write(lambda t: t.drop(name))

    # -- whole database ---------------------------------------------------------------
    def export_all(self) -> dict[str, dict[str, Any]]:
        """Every namespace with its items, from ONE consistent snapshot.

        Returns:
            ``{namespace: {key: value}}``.
        """
        out: dict[str, dict[str, Any]] = {}
        names = self.list_namespaces()
        if self._max_dbs < len(names) + 4:
            # Open every handle without the table filling up midway (a
            # reopen would invalidate the handles already collected).
            with self._wlock:
                self._max_dbs = min(1 << (len(names) + 4).bit_length(), MAX_MAX_DBS)
                self._env.close()
                self._open_env()
        handles = {ns: self._read_dbi(_ns_dbname(ns)) for ns in names}
        with self._begin() as txn:
            for ns, dbi in handles.items():
                if dbi is None:
                    continue
                if txn.get(_ns_dbname(ns)) is None:
                    continue
                out[ns] = dict(_unpack(k, v) for k, v in txn.cursor(db=dbi))
        return out

    def replace_all(self, data: dict[str, dict[str, Any]]) -> None:
        """Atomically replace every namespace with ``data`` (restore).
        Registered namespaces missing from ``data`` are recreated empty."""
        for ns, items in data.items():
            _ns_dbname(ns)
            for key, value in items.items():
                if not isinstance(key, str):
                    raise ApiError(f"Invalid Key Format: '{key}'", 400)

        def fn(t: _Txn) -> None:
            self._put_all(t, data, replace=True)
            for ns in self._registered:
                t.dbi(_ns_dbname(ns), create=True)
        self._write(fn)

    def backup(self, path: str) -> str:
        """Write a backup (Moonraker-schema SQLite, atomic) of the current
        state to ``path``.

        Returns:
            the absolute path written.
        Raises:
            OSError: the file cannot be written.
        """
        path = os.path.abspath(path)
        from . import migration as migrate
        migrate.write_sqlite(self.export_all(), path)
        return path

    def restore(self, path: str) -> dict[str, list[str]]:
        """Replace the whole database with the content of a backup (or of a
        Moonraker ``moonraker-sql.db``), atomically.

        Returns:
            ``{"restored_tables": [...], "restored_namespaces": [...]}`` (the
            shape of Moonraker's ``server.database.restore`` result).
        Raises:
            database_migrate.FormatError: not a Moonraker/moonflask database.
        """
        from . import migration as migrate
        data = migrate.read_sqlite(path)
        self.replace_all(data)
        return {"restored_tables": migrate.sqlite_tables(path),
                "restored_namespaces": sorted(data)}

    def backup_dir(self) -> str:
        """``DATA_PATH/backup/database`` (where Moonraker keeps its backups)."""
        return os.path.join(os.path.dirname(self.path), BACKUP_SUBDIR)

    def list_backups(self) -> list[str]:
        """File names in :meth:`backup_dir` (``server.database.list``'s
        ``backups``), sorted."""
        try:
            return sorted(f for f in os.listdir(self.backup_dir())
                          if not f.startswith(".") and
                          os.path.isfile(os.path.join(self.backup_dir(), f)))
        except OSError:
            return []

    def backup_path(self, filename: str | None = None) -> str:
        """Absolute path of a backup in :meth:`backup_dir`.

        Args:
            filename: a plain file name; default
                ``sqldb-backup-YYYYmmdd-HHMMSS.db`` (Moonraker's pattern).
        Raises:
            ApiError(400, "Invalid name NAME."): a path, ``..``, empty.
        """
        if filename is None:
            filename = datetime.datetime.now().strftime("sqldb-backup-%Y%m%d-%H%M%S.db")
        if not isinstance(filename, str) or not re.fullmatch(r"[^/\\\x00]+", filename) or \
                filename in (".", "..") or filename.startswith("."):
            raise ApiError(f"Invalid name {filename}.", 400)
        return os.path.join(self.backup_dir(), filename)

    def stats(self) -> dict[str, Any]:
        """Diagnostics: ``{"map_size", "file_size", "max_dbs", "namespaces"}``."""
        data_file = os.path.join(self.path, "data.mdb")
        return {"map_size": self._map_size, "max_dbs": self._max_dbs,
                "file_size": os.path.getsize(data_file) if os.path.exists(data_file) else 0,
                "namespaces": len(self.list_namespaces())}


class DatabaseLocked(Exception):
    """Another process holds the database (or a restore is running)."""


class Namespace:
    """One namespace, for components (history, auth, job queue, webcams,
    announcements, metadata cache).  Obtain it with :meth:`Database.namespace`.

    Keys are strings; with ``parse_keys`` a dotted string is a nested path
    (``"history.job_totals"``); a list key is always a nested path.  Values
    returned are fresh copies (mutating them changes nothing stored).
    """

    def __init__(self, db: Database, name: str, parse_keys: bool) -> None:
        self.db = db
        self.name = name
        self.parse_keys = parse_keys

    def _parts(self, key: Any) -> list[str]:
        if isinstance(key, str) and not self.parse_keys:
            return [key]
        return parse_key(key)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` when missing."""
        parts = self._parts(key)
        return self.db._get_parts(self.name, _ns_dbname(self.name), parts, key, default)

    def __getitem__(self, key: Any) -> Any:
        parts = self._parts(key)
        try:
            return self.db._get_parts(self.name, _ns_dbname(self.name), parts, key, _MISSING)
        except ApiError as e:
            if e.status == 404:
                raise KeyError(key) from None
            raise

    def __contains__(self, key: Any) -> bool:
        absent = object()
        return self.get(key, absent) is not absent

    def insert(self, key: Any, value: Any) -> Any:
        """Store ``value`` at ``key`` (durably); returns ``value``.
        Raises ApiError(400) for an unstorable value."""
        return self.db._insert(self.name, self._parts(key), value)

    __setitem__ = insert

    def update(self, key: Any, value: Any) -> Any:
        """:meth:`Database.update_item` (merge objects); ApiError 404 if missing."""
        return self.db.update_item(self.name, self._parts(key), value)

    def delete(self, key: Any) -> Any:
        """Delete ``key``; returns the deleted value.  Raises ApiError(404)
        when missing (use :meth:`pop` to ignore that)."""
        return self.db.delete_item(self.name, self._parts(key))

    def __delitem__(self, key: Any) -> None:
        try:
            self.delete(key)
        except ApiError as e:
            if e.status == 404:
                raise KeyError(key) from None
            raise

    def pop(self, key: Any, default: Any = None) -> Any:
        """Delete ``key`` and return its value, or ``default`` when missing."""
        try:
            return self.delete(key)
        except ApiError as e:
            if e.status == 404:
                return default
            raise

    def keys(self) -> list[str]:
        """Top-level keys, in order."""
        return self.db.ns_keys(self.name)

    def values(self) -> list[Any]:
        """Top-level values, in key order."""
        return [v for _, v in self.db.ns_items(self.name)]

    def items(self) -> list[tuple[str, Any]]:
        """``[(key, value), ...]`` in key order."""
        return self.db.ns_items(self.name)

    def as_dict(self) -> dict[str, Any]:
        """The whole namespace as a dict."""
        return dict(self.db.ns_items(self.name))

    def __len__(self) -> int:
        return self.db.ns_length(self.name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def insert_batch(self, items: dict[str, Any]) -> None:
        """Store several top-level keys in one transaction."""
        self.db.insert_batch(self.name, items)

    def get_batch(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the top-level keys that exist."""
        return self.db.get_batch(self.name, keys)

    def delete_batch(self, keys: Iterable[str]) -> dict[str, Any]:
        """Delete several top-level keys in one transaction; returns the deleted."""
        return self.db.delete_batch(self.name, keys)

    def clear(self) -> None:
        """Delete every key."""
        self.db.clear_namespace(self.name)


# -- command line ---------------------------------------------------------------------
def _db_dir(data_path: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(data_path)), "database")


def main(argv: list[str] | None = None) -> int:
    """``python -m moonflask.components.database {backup,restore,dump} DATA_PATH ...``.

    Returns:
        the exit status (0 ok, 1 error, 2 database in use).
    """
    p = argparse.ArgumentParser(prog="python -m moonflask.components.database",
                                description="moonflask database backup / restore")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup", help="write a portable backup (Moonraker-schema SQLite)")
    b.add_argument("data_path")
    b.add_argument("out_file")
    r = sub.add_parser("restore", help="replace the database with a backup or a "
                       "Moonraker moonraker-sql.db (stop moonflask first)")
    r.add_argument("data_path")
    r.add_argument("in_file")
    d = sub.add_parser("dump", help="print the database (or one namespace) as JSON")
    d.add_argument("data_path")
    d.add_argument("namespace", nargs="?")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from . import migration as migrate
    path = _db_dir(args.data_path)
    try:
        if args.cmd == "backup":
            if not os.path.exists(os.path.join(path, "data.mdb")):
                print(f"no moonflask database in {path}", file=sys.stderr)
                return 1
            with Database(path, readonly=True) as db:
                out = db.backup(args.out_file)
                n = len(db.list_namespaces())
            print(f"backup of {n} namespaces written to {out}")
        elif args.cmd == "restore":
            data = migrate.read_sqlite(args.in_file)
            with Database(path, exclusive=True, import_moonraker=False) as db:
                db.replace_all(data)
            print(f"restored {len(data)} namespaces from {args.in_file}: "
                  + ", ".join(sorted(data)))
        else:
            with Database(path, readonly=True) as db:
                if args.namespace is None:
                    data = db.export_all()
                else:
                    data = db.get_item(args.namespace)
            json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
            print()
    except DatabaseLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (migrate.FormatError, OSError, lmdb.Error, ApiError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
