"""The LMDB storage layer: namespaces of JSON values.

Spec: web_api.md "Database APIs" (the endpoints live in
``blueprints/database.py``; this module is the store they call).  The
package: ``codec`` (names, keys, values), ``namespace`` (the dict-like view
components use), ``backup`` (export, restore, backups), ``migration``
(Moonraker's SQLite schema), ``cli`` (the command line).

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

The command line (backup, restore, dump) is :mod:`.cli`.

Backups are SQLite files in Moonraker 0.11's schema (see
``migration``): portable across CPU architectures, restorable by
moonflask and by Moonraker.  On first start with an empty database, an
existing ``DATA_PATH/database/moonraker-sql.db`` is imported.
"""
from __future__ import annotations

import datetime
import fcntl
import logging
import os
import threading
from typing import Any, Callable, Iterable

import gevent
import gevent.event
import lmdb

from ...api import ApiError, disk_full_error, is_disk_full
from .backup import BackupMixin
from .codec import (DEFAULT_MAX_DBS, FORBIDDEN_NAMESPACES, HIDDEN_NAMESPACES,
                    LITERAL_KEY_NAMESPACES, LOCK_FILE,
                    MAX_MAX_DBS, MOONRAKER_DB_FILE, PROTECTED_NAMESPACES, SCHEMA_VERSION,
                    _META_DB, _MISSING, _NS_PREFIX, _check_value, _db_key, _default_map_size,
                    _dumps, _enc_str, _is_long, _loads, _nested_parent, _not_found, _ns_dbname,
                    _ns_not_found, _pack, _unpack, parse_key)
from .namespace import Namespace

log = logging.getLogger(__name__)

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
    greenlets while LMDB fsyncs (the GIL is released during the commit).
    An exception is re-raised here, in the caller's greenlet: raised in the
    worker thread, gevent would print it to stderr first, and when stderr is
    on the file system that just filled up that print fails too and the
    caller waits forever."""
    def call() -> tuple[bool, Any]:
        try:
            return True, fn(*args)
        except BaseException as err:   # noqa: B036 (handed to the caller)
            return False, err
    ok, value = gevent.get_hub().threadpool.apply(call)
    if not ok:
        raise value
    return value


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


class Database(BackupMixin):
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
        self._hidden: set[str] = set(HIDDEN_NAMESPACES)
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
            try:
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
            except Exception as err:
                # The commit itself failed (nothing of the batch is written):
                # every writer of the batch learns it, none waits forever.  A
                # full disk is a 507 (LMDB reports the short write as EIO).
                if is_disk_full(err, self.path):
                    err = disk_full_error("the database")
                else:
                    log.error("Database commit failed: %s", err)
                for job in batch:
                    job.error = err
            finally:
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
            client: leave out the forbidden and hidden namespaces (what
                ``server.database.list`` shows).
        Returns:
            ``["fluidd", "moonraker", ...]``
        """
        with self._begin() as txn:
            names = self._list(txn)
        if client:
            names = [n for n in names if n not in self._forbidden and n not in self._hidden]
        return names

    def has_namespace(self, namespace: str) -> bool:
        """True when ``namespace`` exists (even empty, when registered)."""
        return self._read_dbi(_ns_dbname(namespace)) is not None

    def register_namespace(self, namespace: str, *, protected: bool = False,
                           forbidden: bool = False, create: bool = True) -> None:
        """Create ``namespace`` if absent and keep it even when emptied (as
        Moonraker keeps the namespaces its components register, listed with
        an empty value).

        Args:
            protected: clients may read, not write it.
            forbidden: clients may neither read nor write nor list it.
            create: False leaves it absent until its first write (as the
                reference creates ``webcams`` when the first one is added).
        """
        name = _ns_dbname(namespace)
        self._registered.add(namespace)
        if protected:
            self._protected.add(namespace)
        if forbidden:
            self._forbidden.add(namespace)
        if not create or self.readonly or self._read_dbi(name) is not None:
            return
        self._write(lambda t: t.dbi(name, create=True))

    def protect_namespace(self, namespace: str) -> None:
        """Make ``namespace`` readable, not writable, by clients (without
        creating it)."""
        self._protected.add(namespace)

    def namespace(self, namespace: str, parse_keys: bool | None = None, *,
                  protected: bool = False, forbidden: bool = False,
                  create: bool = True) -> "Namespace":
        """A :class:`Namespace` wrapper for a component; registers the
        namespace (see :meth:`register_namespace`).

        Args:
            parse_keys: split string keys on dots (``"a.b"`` -> nested);
                default False for :data:`LITERAL_KEY_NAMESPACES` (file paths,
                usernames, ids), True otherwise.  List keys are always nested.
        """
        if parse_keys is None:
            parse_keys = namespace not in LITERAL_KEY_NAMESPACES
        self.register_namespace(namespace, protected=protected, forbidden=forbidden,
                                create=create)
        w = self._wrappers.get((namespace, parse_keys))
        if w is None:
            w = self._wrappers[(namespace, parse_keys)] = Namespace(self, namespace, parse_keys)
        return w

    # -- client policy --------------------------------------------------------------
    def check_client_access(self, namespace: str, write: bool) -> None:
        """Apply the client policy; call it BEFORE validating the key (Moonraker
        answers 403 even when the key is missing or malformed).

        Raises:
            ApiError(404, "Namespace X not found"): hidden namespace (any verb).
            ApiError(403, "Read/Write access to namespace 'X' is forbidden"):
                forbidden namespace (read or write).
            ApiError(403, "Write access to namespace 'X' is forbidden"):
                protected namespace and ``write``.
        """
        if namespace in self._hidden:
            raise ApiError(f"Namespace {namespace} not found", 404)
        if namespace in self._forbidden:
            raise ApiError(f"Read/Write access to namespace '{namespace}' is forbidden", 403)
        if write and namespace in self._protected:
            raise ApiError(f"Write access to namespace '{namespace}' is forbidden", 403)

    def is_protected(self, namespace: str) -> bool:
        """True when clients may read but not write ``namespace``."""
        return namespace in self._protected

    def is_forbidden(self, namespace: str) -> bool:
        """True when clients may not see ``namespace`` at all."""
        return namespace in self._forbidden or namespace in self._hidden

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

    def stats(self) -> dict[str, Any]:
        """Diagnostics: ``{"map_size", "file_size", "max_dbs", "namespaces"}``."""
        data_file = os.path.join(self.path, "data.mdb")
        return {"map_size": self._map_size, "max_dbs": self._max_dbs,
                "file_size": os.path.getsize(data_file) if os.path.exists(data_file) else 0,
                "namespaces": len(self.list_namespaces())}


class DatabaseLocked(Exception):
    """Another process holds the database (or a restore is running)."""
