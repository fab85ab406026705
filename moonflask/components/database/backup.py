"""Whole-database operations of :class:`.store.Database`: consistent
export, atomic replace, portable backups (Moonraker-schema SQLite, see
:mod:`.migration`) and restores.  Spec: web_api.md "Database APIs"."""
from __future__ import annotations

import datetime
import os
import re
from typing import TYPE_CHECKING, Any


from ...api import ApiError
from .codec import BACKUP_SUBDIR, MAX_MAX_DBS, _ns_dbname, _unpack

if TYPE_CHECKING:
    from .store import _Txn


class BackupMixin:
    """Backup and restore methods of :class:`.store.Database`."""

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
            migration.FormatError: not a Moonraker/moonflask database.
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
