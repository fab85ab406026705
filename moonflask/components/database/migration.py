"""Moonraker's SQLite database format: read it (import, restore) and write it
(backup).

Moonraker >= 0.9 keeps its state in ``DATA_PATH/database/moonraker-sql.db``.
The schema below was observed on databases written by the real Moonraker
0.11.0 (see ``tests/data/make_moonraker_db.sh``):

- ``table_registry(name, prototype, version)``: the tables and their
  ``CREATE`` text;
- ``namespace_store(namespace, key, value record)``: one row per top-level
  key of each namespace.  ``value`` is a BLOB whose first byte tells its
  type: ``q`` + little-endian int64, ``d`` + little-endian double,
  ``?`` + one byte (bool), ``s`` + UTF-8 text, otherwise JSON text (objects
  ``{...}`` and arrays ``[...]``).  Moonraker cannot store a top-level null;
- ``authorized_users``: one row per user; the API key is the row of
  ``_API_KEY_USER_`` whose ``password`` column holds the key;
- ``job_history``: one row per print job (``job_id`` integer; the API shows
  it as six hex digits), ``metadata``/``auxiliary_data`` as JSON text;
- ``job_totals(provider, field, maximum, total, instance_id)``: the
  ``history`` provider's ``total_*`` fields use ``total``, ``longest_*``
  use ``maximum``.

moonflask keeps all of its state in LMDB namespaces; this module maps the
tables to the namespaces moonflask's components use:

====================  ==============================================
Moonraker table       moonflask namespace / key
====================  ==============================================
namespace_store       the same namespace and key (``database`` skipped)
authorized_users      ``authorized_users`` / username -> the row as a dict
                      (``groups`` decoded); ``_API_KEY_USER_`` ->
                      ``{"username", "api_key", "created_on", "source",
                      "groups"}``
job_history           ``history`` / ``"%06X" % job_id`` -> the job as
                      ``server.history.get_job`` shows it, without
                      ``exists`` (the history component computes it)
job_totals            ``moonraker`` / ``history`` -> ``{"job_totals":
                      {...}}`` (+ ``"auxiliary_totals": [...]`` for
                      other providers)
====================  ==============================================

:func:`write_sqlite` does the reverse, so a moonflask backup is a valid
Moonraker 0.11 database (Moonraker can restore it), and a moonflask backup
round-trips losslessly: whatever does not fit Moonraker's columns (a record
with extra fields, a top-level ``null``) is also kept, whole, in the extra
table ``moonflask_extras(namespace, key, value)``, which Moonraker ignores and
:func:`read_sqlite` prefers.

Spec: web_api.md "Database APIs"; DESIGN.md ("makes it portable through its
backup format and its import of Moonraker's database").
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import tempfile
from typing import Any, Iterator

log = logging.getLogger(__name__)

USERS_NAMESPACE = "authorized_users"
HISTORY_NAMESPACE = "history"
MOONRAKER_NAMESPACE = "moonraker"
API_KEY_USER = "_API_KEY_USER_"
TRUSTED_USER = "_TRUSTED_USER_"
INTERNAL_NAMESPACE = "database"     # Moonraker's own bookkeeping; never imported
EXTRAS_TABLE = "moonflask_extras"

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

# Table definitions as Moonraker 0.11.0 writes them (observed; they are
# stored verbatim in table_registry.prototype).
TABLES: dict[str, str] = {
    "namespace_store": """namespace_store (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value record NOT NULL,
    PRIMARY KEY (namespace, key)
)""",
    "authorized_users": """authorized_users (
    username TEXT PRIMARY KEY NOT NULL,
    password TEXT NOT NULL,
    created_on REAL NOT NULL,
    salt TEXT NOT NULL,
    source TEXT NOT NULL,
    jwt_secret TEXT,
    jwk_id TEXT,
    groups pyjson
)""",
    "job_history": """job_history (
    job_id INTEGER PRIMARY KEY ASC,
    user TEXT NOT NULL,
    filename TEXT,
    status TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL,
    print_duration REAL NOT NULL,
    total_duration REAL NOT NULL,
    filament_used REAL NOT NULL,
    metadata pyjson,
    auxiliary_data pyjson NOT NULL,
    instance_id TEXT NOT NULL
)""",
    "job_totals": """job_totals (
    provider TEXT NOT NULL,
    field TEXT NOT NULL,
    maximum REAL,
    total REAL,
    instance_id TEXT NOT NULL,
    PRIMARY KEY (provider, field, instance_id)
)""",
}
REGISTRY_TABLE = """table_registry (
    name TEXT NOT NULL PRIMARY KEY,
    prototype TEXT NOT NULL,
    version INT
)"""
TOTAL_FIELDS = ("total_jobs", "total_time", "total_print_time", "total_filament_used")
MAX_FIELDS = ("longest_job", "longest_print")
JOB_COLUMNS = ("user", "filename", "status", "start_time", "end_time", "print_duration",
               "total_duration", "filament_used", "metadata", "auxiliary_data")
USER_COLUMNS = ("username", "password", "created_on", "salt", "source", "jwt_secret",
                "jwk_id", "groups")


class FormatError(Exception):
    """The file is not a Moonraker/moonflask SQLite database."""


# -- namespace_store values ---------------------------------------------------
def decode_record(blob: Any) -> Any:
    """Decode one ``namespace_store.value``.

    Args:
        blob: bytes (or str) as stored by Moonraker.
    Returns:
        the Python value.
    Raises:
        ValueError: the blob is not a known encoding.
    """
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "surrogatepass")
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        # A plain SQLite INTEGER/REAL (never written by Moonraker, but harmless).
        if isinstance(blob, (int, float)):
            return blob
        raise ValueError(f"unknown record type {type(blob).__name__}")
    blob = bytes(blob)
    if not blob:
        raise ValueError("empty record")
    tag, body = blob[:1], blob[1:]
    if tag == b"q" and len(body) == 8:
        return struct.unpack("<q", body)[0]
    if tag == b"d" and len(body) == 8:
        return struct.unpack("<d", body)[0]
    if tag == b"?" and len(body) == 1:
        return body != b"\x00"
    if tag == b"s":
        return body.decode("utf-8", "surrogatepass")
    return json.loads(blob.decode("utf-8", "surrogatepass"))


def encode_record(value: Any) -> bytes | None:
    """Encode ``value`` the way Moonraker stores a top-level value.

    Returns:
        the BLOB, or None when Moonraker has no encoding for it (``None``,
        an int outside int64).
    """
    if isinstance(value, bool):
        return b"?" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return b"q" + struct.pack("<q", value)
        return None
    if isinstance(value, float):
        return b"d" + struct.pack("<d", value)
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, (dict, list)):
        return _dumps(value).encode("utf-8", "surrogatepass")
    return None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads_col(text: Any, default: Any) -> Any:
    if text is None:
        return default
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "surrogatepass")
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


# -- row <-> record mapping ---------------------------------------------------
def user_row_to_record(row: dict[str, Any]) -> dict[str, Any]:
    """An ``authorized_users`` row as a moonflask user record."""
    groups = _loads_col(row.get("groups"), ["admin"])
    if row["username"] == API_KEY_USER:
        return {"username": API_KEY_USER, "api_key": row.get("password"),
                "created_on": row.get("created_on"), "source": row.get("source") or "moonraker",
                "groups": groups}
    return {"username": row["username"], "password": row.get("password"),
            "created_on": row.get("created_on"), "salt": row.get("salt"),
            "source": row.get("source") or "moonraker", "jwt_secret": row.get("jwt_secret"),
            "jwk_id": row.get("jwk_id"), "groups": groups}


def user_record_to_row(username: str, rec: dict[str, Any]) -> tuple:
    """A moonflask user record as an ``authorized_users`` row (USER_COLUMNS order)."""
    if username == API_KEY_USER:
        password = rec.get("api_key") or rec.get("password") or ""
    else:
        password = rec.get("password") or ""
    groups = rec.get("groups", ["admin"])
    return (username, str(password), _float(rec.get("created_on"), 0.0), rec.get("salt") or "",
            rec.get("source") or "moonraker", rec.get("jwt_secret"), rec.get("jwk_id"),
            None if groups is None else _dumps(groups))


def job_row_to_record(row: dict[str, Any]) -> dict[str, Any]:
    """A ``job_history`` row as a moonflask history record (key: ``"%06X" % job_id``)."""
    return {"job_id": "%06X" % int(row["job_id"]), "user": row.get("user"),
            "filename": row.get("filename"), "status": row.get("status"),
            "start_time": row.get("start_time"), "end_time": row.get("end_time"),
            "print_duration": row.get("print_duration"),
            "total_duration": row.get("total_duration"),
            "filament_used": row.get("filament_used"),
            "metadata": _loads_col(row.get("metadata"), {}),
            "auxiliary_data": _loads_col(row.get("auxiliary_data"), [])}


def job_record_to_row(key: str, rec: dict[str, Any]) -> tuple | None:
    """A history record as a ``job_history`` row (job_id first), or None
    when the key is not a job id."""
    try:
        job_id = int(key, 16)
    except (TypeError, ValueError):
        return None
    if job_id < 0 or job_id > INT64_MAX:
        return None
    return (job_id, rec.get("user") or TRUSTED_USER, rec.get("filename"),
            rec.get("status") or "completed", _float(rec.get("start_time"), 0.0),
            _float(rec.get("end_time"), None), _float(rec.get("print_duration"), 0.0),
            _float(rec.get("total_duration"), 0.0), _float(rec.get("filament_used"), 0.0),
            _dumps(rec.get("metadata") if rec.get("metadata") is not None else {}),
            _dumps(rec.get("auxiliary_data") if rec.get("auxiliary_data") is not None else []),
            "default")


def _float(value: Any, default: Any) -> Any:
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _num(value: Any) -> Any:
    """REAL columns come back as floats; keep integral counts as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- reading ------------------------------------------------------------------
def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _rows(conn: sqlite3.Connection, table: str) -> Iterator[dict[str, Any]]:
    cur = conn.execute(f'SELECT * FROM "{table}"')
    names = [d[0] for d in cur.description]
    for row in cur:
        yield dict(zip(names, row))


def read_sqlite(path: str) -> dict[str, dict[str, Any]]:
    """Read a Moonraker (>= 0.9) or moonflask-backup SQLite database.

    Args:
        path: the ``.db`` file (opened read-only; never modified).
    Returns:
        ``{namespace: {key: value}}`` in moonflask's layout (see the module
        docstring); Moonraker's internal ``database`` namespace is left out.
    Raises:
        FormatError: not an SQLite database, or no ``namespace_store`` table.
    """
    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise FormatError(f"{path}: {e}") from e
    try:
        try:
            tables = _tables(conn)
        except sqlite3.DatabaseError as e:
            raise FormatError(f"{path}: not an SQLite database ({e})") from e
        if "namespace_store" not in tables:
            raise FormatError(f"{path}: no namespace_store table; not a Moonraker database")
        out: dict[str, dict[str, Any]] = {}

        def put(ns: str, key: str, value: Any) -> None:
            out.setdefault(ns, {})[key] = value

        for row in _rows(conn, "namespace_store"):
            ns, key = str(row["namespace"]), str(row["key"])
            if ns == INTERNAL_NAMESPACE:
                continue
            try:
                put(ns, key, decode_record(row["value"]))
            except (ValueError, struct.error) as e:
                log.warning("Skipping undecodable item %r in namespace %r: %s", key, ns, e)
        if "authorized_users" in tables:
            for row in _rows(conn, "authorized_users"):
                if row.get("username") is None:
                    continue
                put(USERS_NAMESPACE, str(row["username"]), user_row_to_record(row))
        if "job_history" in tables:
            for row in _rows(conn, "job_history"):
                try:
                    rec = job_row_to_record(row)
                except (TypeError, ValueError):
                    log.warning("Skipping history row with job_id %r", row.get("job_id"))
                    continue
                put(HISTORY_NAMESPACE, rec["job_id"], rec)
        if "job_totals" in tables:
            totals: dict[str, Any] = {}
            aux: list[dict[str, Any]] = []
            for row in _rows(conn, "job_totals"):
                if row.get("instance_id", "default") != "default":
                    continue
                field = row.get("field")
                if row.get("provider") == "history":
                    if field in MAX_FIELDS:
                        totals[field] = float(row.get("maximum") or 0.0)
                    elif field == "total_jobs":
                        totals[field] = _num(row.get("total") or 0)
                    else:
                        totals[field] = float(row.get("total") or 0.0)
                else:
                    aux.append({"provider": row.get("provider"), "field": field,
                                "maximum": row.get("maximum"), "total": row.get("total")})
            if totals or aux:
                hist = out.setdefault(MOONRAKER_NAMESPACE, {}).get("history")
                hist = dict(hist) if isinstance(hist, dict) else {}
                if totals:
                    hist["job_totals"] = totals
                if aux:
                    hist["auxiliary_totals"] = aux
                put(MOONRAKER_NAMESPACE, "history", hist)
        if EXTRAS_TABLE in tables:
            # Whole records written by a moonflask backup: they win.
            for row in _rows(conn, EXTRAS_TABLE):
                try:
                    value = json.loads(bytes(row["value"]).decode("utf-8", "surrogatepass")
                                       if isinstance(row["value"], (bytes, bytearray))
                                       else row["value"])
                except (TypeError, ValueError):
                    continue
                put(str(row["namespace"]), str(row["key"]), value)
        return out
    finally:
        conn.close()


def sqlite_tables(path: str) -> list[str]:
    """The tables listed in ``table_registry`` of an SQLite database (what
    Moonraker's ``server.database.restore`` reports as ``restored_tables``,
    plus ``table_registry`` itself), or ``[]``."""
    try:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM table_registry")]
        return ["table_registry"] + names
    except sqlite3.Error:
        return []
    finally:
        conn.close()


# -- writing ------------------------------------------------------------------
def write_sqlite(data: dict[str, dict[str, Any]], path: str) -> None:
    """Write ``data`` (``{namespace: {key: value}}``, moonflask's layout) as a
    Moonraker 0.11 SQLite database, atomically: a temporary file in the same
    folder, fsync'd, renamed over ``path``, folder fsync'd.

    Raises:
        OSError: the file cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".db", dir=folder)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            _fill(conn, data)
            conn.commit()
        finally:
            conn.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = ""
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fill(conn: sqlite3.Connection, data: dict[str, dict[str, Any]]) -> None:
    conn.execute(f"CREATE TABLE {REGISTRY_TABLE}")
    conn.execute("INSERT INTO table_registry VALUES (?, ?, ?)",
                 ("namespace_store", TABLES["namespace_store"], 1))
    conn.execute(f"CREATE TABLE {TABLES['namespace_store']}")
    for name in ("authorized_users", "job_history", "job_totals"):
        conn.execute("INSERT INTO table_registry VALUES (?, ?, ?)", (name, TABLES[name], 1))
        conn.execute(f"CREATE TABLE {TABLES[name]}")
    conn.execute(f"CREATE TABLE {EXTRAS_TABLE} (namespace TEXT NOT NULL, key TEXT NOT NULL, "
                 "value TEXT NOT NULL, PRIMARY KEY (namespace, key))")
    ns_rows: list[tuple] = [
        (INTERNAL_NAMESPACE, "database_version", encode_record(2)),
        (INTERNAL_NAMESPACE, "protected_namespaces",
         encode_record(["announcements", "gcode_metadata", "moonraker"])),
        (INTERNAL_NAMESPACE, "unsafe_shutdowns", encode_record(0)),
    ]
    extras: list[tuple] = []
    user_rows: list[tuple] = []
    job_rows: list[tuple] = []
    total_rows: list[tuple] = []

    def extra(ns: str, key: str, value: Any) -> None:
        extras.append((ns, key, _dumps(value)))

    for ns, items in data.items():
        if ns == INTERNAL_NAMESPACE:
            continue
        for key, value in items.items():
            if ns == USERS_NAMESPACE and isinstance(value, dict):
                row = user_record_to_row(key, value)
                user_rows.append(row)
                back = user_row_to_record(dict(zip(USER_COLUMNS, row)))
                if back != value:
                    extra(ns, key, value)
                continue
            if ns == HISTORY_NAMESPACE and isinstance(value, dict):
                row = job_record_to_row(key, value)
                if row is not None:
                    job_rows.append(row)
                    back = job_row_to_record(dict(zip(("job_id",) + JOB_COLUMNS, row)))
                    if back != value or back["job_id"] != key:
                        extra(ns, key, value)
                    continue
            if ns == MOONRAKER_NAMESPACE and key == "history" and isinstance(value, dict):
                rest = dict(value)
                totals = rest.pop("job_totals", None)
                aux = rest.pop("auxiliary_totals", None)
                ok = isinstance(totals, dict) or totals is None
                ok = ok and (aux is None or isinstance(aux, list))
                if ok:
                    for field, num in (totals or {}).items():
                        num = _float(num, 0.0)
                        if field in MAX_FIELDS:
                            total_rows.append(("history", field, num, None, "default"))
                        else:
                            total_rows.append(("history", field, None, num, "default"))
                    for a in aux or []:
                        if isinstance(a, dict) and a.get("provider") and a.get("field"):
                            total_rows.append((str(a["provider"]), str(a["field"]),
                                               _float(a.get("maximum"), None),
                                               _float(a.get("total"), None), "default"))
                    if rest:
                        ns_rows.append((ns, key, encode_record(rest)))
                    # The exact dict (int vs float totals, key order) for moonflask.
                    extra(ns, key, value)
                    continue
            blob = encode_record(value)
            if blob is None:
                extra(ns, key, value)
            else:
                ns_rows.append((ns, key, blob))
    conn.executemany("INSERT INTO namespace_store VALUES (?, ?, ?)", ns_rows)
    conn.executemany("INSERT INTO authorized_users VALUES (?, ?, ?, ?, ?, ?, ?, ?)", user_rows)
    conn.executemany("INSERT INTO job_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     job_rows)
    conn.executemany("INSERT OR REPLACE INTO job_totals VALUES (?, ?, ?, ?, ?)", total_rows)
    conn.executemany(f"INSERT INTO {EXTRAS_TABLE} VALUES (?, ?, ?)", extras)
