"""Crash-safe records for the update manager: the intent journal of an
update in progress and the persistent per-updater state (rollback versions,
what the last crash recovery did).

Every write is atomic and durable: the JSON text goes to a temporary file in
the same folder, is fsynced, renamed over the old file, and the folder is
fsynced, so that after a crash (kill -9, power loss) at any instant the file
holds the old or the new record, never a torn one.  Spec: update_manager.md
(beyond the reference: moonflask's crash safety, issue 12).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

# Steps of an update, in order.  git_repo: a journal whose step is before
# GIT_DONE is returned to the previous version at start; from GIT_DONE on
# (dependencies, SERVICES) it is completed; ROLLING_BACK is finished.
# python: DEPS_DONE once pip installed the target.  web/zip: "swap" once the
# new release is unpacked and its renames begin.
BEGIN = "begin"
GIT_DONE = "git_done"
DEPS_DONE = "deps_done"
SERVICES = "services"
ROLLING_BACK = "rolling_back"


def write_json_atomic(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically and durably.

    Raises: OSError when the folder is not writable.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)


def fsync_dir(folder: str) -> None:
    """fsync a folder so that a rename inside it is durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str) -> None:
    """Flush the file system holding ``path`` (``syncfs(2)``; ``sync`` where
    libc lacks it): used after a clone, whose work tree git does not fsync."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def fsync_files(root: str, names: list[str]) -> None:
    """fsync each existing file ``root/NAME`` and the folders holding them
    (the work-tree files a checkout rewrote; git fsyncs only its own data)."""
    folders = set()
    for name in names:
        full = os.path.join(root, name)
        folders.add(os.path.dirname(full))
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # deleted by the checkout, or a symlink
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in folders:
        if os.path.isdir(folder):
            fsync_dir(folder)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON value in ``path``; ``default`` when it is missing or unreadable
    (an unreadable file is logged)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as err:
        log.error("update manager: unreadable record %s: %s", path, err)
        return default


class Journal:
    """The records of the update manager, in ``folder``
    (``DATA_PATH/update_manager/``).

    ``journal-NAME.json`` exists while an update of NAME is in progress:
    ``{"name", "op", "step", "from_hash", "from_version", "to_hash",
    "to_version", "proc_id", "started", "updated"}``.  ``state.json`` holds
    ``{NAME: {"rollback_hash", "rollback_version", "recovery_note", ...}}``.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.state: dict[str, dict[str, Any]] = read_json(self._state_path, {}) or {}
        self._deferring = 0
        self._deferred_dirty = False

    @property
    def _state_path(self) -> str:
        return os.path.join(self.folder, "state.json")

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, f"journal-{name}.json")

    # -- intent records ---------------------------------------------------
    def begin(self, name: str, op: str, **fields: Any) -> dict[str, Any]:
        """Record that ``op`` (upgrade | rollback | recover) of ``name`` starts.

        Returns: the record (pass it to :meth:`step` and :meth:`finish`)."""
        now = time.time()
        rec = {"name": name, "op": op, "step": BEGIN, "started": now, "updated": now, **fields}
        write_json_atomic(self._path(name), rec)
        return rec

    def step(self, rec: dict[str, Any], step: str, **fields: Any) -> None:
        """Record that ``rec``'s update reached ``step``."""
        rec.update(fields, step=step, updated=time.time())
        write_json_atomic(self._path(rec["name"]), rec)

    def finish(self, rec: dict[str, Any]) -> None:
        """The update of ``rec`` is complete (or returned): drop its record."""
        try:
            os.unlink(self._path(rec["name"]))
        except FileNotFoundError:
            return
        fsync_dir(self.folder)

    def pending(self) -> list[dict[str, Any]]:
        """Records of updates interrupted by a crash (found at start)."""
        out = []
        for fname in sorted(os.listdir(self.folder)):
            if fname.startswith("journal-") and fname.endswith(".json"):
                rec = read_json(os.path.join(self.folder, fname))
                if isinstance(rec, dict) and "name" in rec:
                    out.append(rec)
            elif ".tmp-" in fname:  # a write interrupted before its rename
                os.unlink(os.path.join(self.folder, fname))
        return out

    # -- persistent state -------------------------------------------------
    def get(self, name: str) -> dict[str, Any]:
        """The persistent state of updater ``name`` (a copy)."""
        return dict(self.state.get(name, {}))

    def put(self, name: str, **fields: Any) -> None:
        """Update and durably store the state of updater ``name``."""
        cur = self.state.setdefault(name, {})
        cur.update(fields)
        write_json_atomic(self._state_path, self.state)

    def put_lazy(self, name: str, **fields: Any) -> None:
        """As :meth:`put`, but inside :meth:`deferred` the write waits for its
        end (one write for many updaters: bookkeeping such as
        ``last_refresh``, never an update's intent)."""
        if not self._deferring:
            self.put(name, **fields)
            return
        self.state.setdefault(name, {}).update(fields)
        self._deferred_dirty = True

    @contextlib.contextmanager
    def deferred(self) -> Any:
        """Collect the :meth:`put_lazy` writes made inside into one durable
        write at the end (a refresh of every updater writes state.json once
        instead of once per updater, each write being two fsyncs)."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1
            if not self._deferring and self._deferred_dirty:
                self._deferred_dirty = False
                write_json_atomic(self._state_path, self.state)
