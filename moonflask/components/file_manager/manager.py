"""The ``file_manager`` component: roots, listings, uploads, downloads,
file and directory operations, gcode metadata and change notifications.

Spec: web_api.md "File Operations" and Appendix "File List Changed".

Roots ``gcodes`` and ``config`` (read-write) and ``logs`` (read-only) live in
the data path; ``config_examples`` and ``docs`` (read-only) come from
Klippy's ``klipper_path`` once Klippy identifies.  Every client path goes
through :mod:`moonflask.components.file_manager.roots`.  Blocking file work (copies, tree
removal, zip archives) runs in gevent's threadpool; metadata extraction runs
in a worker process (:mod:`moonflask.components.file_manager.scanner`).

Events emitted for other components:

- ``file_manager:filelist_changed`` (payload dict, as sent to clients)
- ``file_manager:upload_complete`` (``{"root", "path", "print_requested",
  "size", "checksum"}``)

Hook: :meth:`FileManager.set_upload_print_handler` (job queue).
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import gevent

from ...config import ConfigError
from ...api import ApiError, disk_full_error, is_disk_full
from .upload_handler import UploadMixin
from .roots import (os_error, threadpool, Root, clean_relative, file_permissions, is_dir,
                    is_gcode, join, split_root, stat_info)
from .scanner import PRIO_BACKGROUND, PRIO_REQUEST, MetadataCache, MetadataScanner, ScanError

log = logging.getLogger(__name__)


SUPPRESS_GRACE = 1.0     # seconds inotify events of our own changes are ignored


class FileManager(UploadMixin):
    """The file manager component.

    Args:
        server: the Server.
        config: the ``[file_manager]`` section (options
            ``enable_object_processing``, ``queue_gcode_uploads``,
            ``file_system_observer`` (inotify|none), ``enable_observer_warnings``,
            ``default_metadata_parser_timeout`` (seconds),
            ``enable_config_write_access``, ``check_klipper_config_path``).
    """

    def __init__(self, server: Any, config: Any) -> None:
        self.server = server
        self.enable_object_processing = config.getboolean("enable_object_processing", False)
        self.queue_gcode_uploads = config.getboolean("queue_gcode_uploads", False)
        observer = config.get("file_system_observer", "inotify").lower()
        config.getboolean("enable_observer_warnings", True)
        config.getboolean("enable_inotify_warnings", True)  # the option's former name
        self.parser_timeout = config.getfloat("default_metadata_parser_timeout", 20.0,
                                              minval=1.0)
        config_access = "rw" if config.getboolean("enable_config_write_access", True) else "r"
        self.check_klipper_config_path = config.getboolean("check_klipper_config_path", True)
        for old in ("config_path", "log_path"):  # superseded by the data path layout
            if config.get(old, None) is not None:
                server.config.runtime_warnings.append(
                    f"[file_manager]: option '{old}' is deprecated and ignored; "
                    "the roots live in the data path")
        self.roots: dict[str, Root] = {}
        self._list_cache: dict[str, list[dict[str, Any]]] = {}
        self._suppressed: dict[tuple[str, str], float] = {}
        self._warned: set[str] = set()
        self._upload_print_handler: Callable[[str], Any] | None = None
        self._greenlets: list[Any] = []
        self.watcher: Any = None
        if observer not in ("inotify", "none"):
            raise ConfigError(f"[file_manager] file_system_observer: unknown observer "
                              f"'{observer}' (inotify or none)")
        if observer == "inotify":
            try:
                from .watcher import FileWatcher
                self.watcher = FileWatcher(self)
            except Exception as err:  # no inotify on this system
                log.warning("inotify unavailable, on-disk changes not tracked: %s", err)
        data = server.data_path
        self.register_root("config", os.path.join(data, "config"), config_access, notify=False)
        self.register_root("logs", os.path.join(data, "logs"), "r", notify=False)
        self.register_root("gcodes", os.path.join(data, "gcodes"), "rw", notify=False)
        self.metadata = MetadataCache(server)
        self.scanner = MetadataScanner(server.workers)
        server.klippy.add_internal_subscription("file_manager",
                                                {"print_stats", "virtual_sdcard"})
        server.events.on("klippy:identified", self._on_klippy_identified)
        server.events.on("server:started", self._start)
        server.events.on("server:shutdown", self._stop)

    # -- lifetime -----------------------------------------------------------
    def _start(self) -> None:
        self.scanner.start()
        if self.watcher is not None:
            for name in self.roots:
                self.watcher.watch_root(name)
            from ...workers import file_watcher
            self._greenlets.append(self.server.workers.start("file_watcher", file_watcher.run,
                                                             self.watcher))
        self._greenlets.append(gevent.spawn(self._initial_scan))

    def _stop(self) -> None:
        for g in self._greenlets:
            g.stop() if hasattr(g, "stop") else g.kill(block=False)
        self._greenlets = []
        self.scanner.stop()
        if self.watcher is not None:
            self.watcher.close()

    def _initial_scan(self) -> None:
        """Scan every gcode file whose metadata is missing or stale; forget
        entries of files that are gone."""
        root = self.roots["gcodes"]
        present: set[str] = set()
        for entry in self.list_files("gcodes"):
            rel = entry["path"]
            present.add(rel)
            if self.metadata.get_valid(rel, join(root, rel)) is None:
                try:
                    self.scan_metadata(rel, priority=PRIO_BACKGROUND)
                except Exception:
                    log.exception("start-up metadata scan of %s failed", rel)
        for rel in self.metadata.keys():
            if rel not in present:
                self.metadata.delete(rel)

    # -- roots ----------------------------------------------------------------
    def register_root(self, name: str, path: str, permissions: str,
                      notify: bool = True) -> bool:
        """Register (or move) root ``name`` at ``path``.

        A path that is missing or the file-system root is refused with
        Moonraker's warning.  Moving a registered root sends
        ``root_update``.  Returns True when registered.
        """
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(path) or path == "/":
            self._warn(f"Supplied path ({path}) for ({name}) is invalid. Make sure\n"
                       "that the path exists and is not the file system root.")
            return False
        old = self.roots.get(name)
        self.roots[name] = Root(name, path, permissions)
        if name not in self.server.registered_directories:
            self.server.registered_directories.append(name)
        self.mark_dirty(name)
        if old is not None and old.path != path and notify:
            if self.watcher is not None:
                self.watcher.watch_root(name)
            self._notify("root_update", self._item(name, ""))
        elif old is None and self.watcher is not None and self._greenlets:
            self.watcher.watch_root(name)
        return True

    def _warn(self, text: str) -> None:
        if text in self._warned:
            return
        self._warned.add(text)
        self.server.config.runtime_warnings.append(text.replace("\n", "<br/>"))

    def _on_klippy_identified(self) -> None:
        info = self.server.klippy.info or {}
        kpath = info.get("klipper_path")
        if kpath:
            self.register_root("config_examples", os.path.join(kpath, "config"), "r")
            self.register_root("docs", os.path.join(kpath, "docs"), "r")
        cfg = info.get("config_file")
        if cfg and self.check_klipper_config_path:
            cfg_root = self.roots["config"].path
            full = os.path.abspath(cfg) if os.path.isabs(cfg) else cfg
            if not (os.path.isabs(full) and full.startswith(cfg_root + os.sep)):
                self._warn("file_manager: Klipper configuration file not located in "
                           "'config' folder.\n\n"
                           f"Klipper Config Path: {cfg}\n\nConfig Folder: {cfg_root}")

    def get_root(self, name: str, write: bool = False) -> Root:
        """The registered root ``name``.

        Raises: ApiError 400 ``Invalid root request: NAME`` when unknown (or
        read-only and ``write`` is asked)."""
        root = self.roots.get(name) if isinstance(name, str) else None
        if root is None:
            raise ApiError(f"Invalid root path ({name})", 400)
        if write and not root.writable:
            raise ApiError("Operation Not Supported", 405)
        return root

    def resolve(self, full: str, arg: str = "path", write: bool = False,
                default_root: str | None = None) -> tuple[Root, str, str]:
        """Resolve a client ``root/rel`` path.

        Returns: ``(root, rel, on_disk_path)``.
        Raises: ApiError 400/403 (bad root, ``..``, absolute, NUL ...).
        """
        if full is None and default_root is not None:
            full = default_root
        root_name, rest = split_root(full, arg)
        root = self.get_root(root_name, write)
        rel = clean_relative(rest, arg)
        return root, rel, join(root, rel)

    # -- the virtual_sdcard file ----------------------------------------------
    def printing_file(self) -> str | None:
        """The gcodes-relative path Klippy is printing (or has paused), or None."""
        status = self.server.klippy.status
        ps = status.get("print_stats") or {}
        if ps.get("state") in ("printing", "paused") and ps.get("filename"):
            return clean_relative(str(ps["filename"]))
        vsd = status.get("virtual_sdcard") or {}
        fpath = vsd.get("file_path")
        if vsd.get("is_active") and fpath:
            root = self.roots["gcodes"].path
            if str(fpath).startswith(root + os.sep):
                return os.path.relpath(fpath, root)
        return None

    def check_not_printing(self, root: Root, rel: str) -> None:
        """Raise ApiError 403 when ``rel`` is (or contains) the file being printed."""
        if root.name != "gcodes":
            return
        current = self.printing_file()
        if current and (rel == "" or current == rel or current.startswith(rel + "/")):
            raise ApiError("File currently in use", 403)

    # -- change tracking --------------------------------------------------------
    def mark_dirty(self, root: str) -> None:
        """Forget the cached file list of ``root``."""
        self._list_cache.pop(root, None)

    @contextmanager
    def suppress(self, *paths: tuple[str, str]) -> Iterator[None]:
        """Ignore inotify events for ``(root, rel)`` paths (and below) during
        the block and shortly after: the caller announces the change."""
        for p in paths:
            self._suppressed[p] = float("inf")
        try:
            yield
        finally:
            until = time.monotonic() + SUPPRESS_GRACE
            for p in paths:
                self._suppressed[p] = until
                self.mark_dirty(p[0])

    def is_suppressed(self, root: str, rel: str) -> bool:
        """True when inotify events for ``root/rel`` are to be ignored."""
        now = time.monotonic()
        expired = [k for k, t in self._suppressed.items() if t < now]
        for k in expired:
            del self._suppressed[k]
        for (r, p) in self._suppressed:
            if r == root and (p == "" or rel == p or rel.startswith(p + "/")):
                return True
        return False

    def _item(self, root: str, rel: str, deleted: bool = False) -> dict[str, Any]:
        item: dict[str, Any] = {"path": rel, "root": root}
        if deleted:
            item.update(modified=0, size=0, permissions="")
            return item
        try:
            item.update(stat_info(self.roots[root], join(self.roots[root], rel)))
        except ApiError:
            item.update(modified=0, size=0, permissions="")
        return item

    def _notify(self, action: str, item: dict[str, Any],
                source: dict[str, Any] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": action, "item": item}
        if source is not None:
            payload["source_item"] = source
        self.server.events.notify("notify_filelist_changed", [payload])
        self.server.events.emit("file_manager:filelist_changed", payload)
        return payload

    def on_disk_change(self, action: str, root: str, rel: str, is_directory: bool,
                       source: tuple[str, str] | None = None,
                       renamed_to: tuple[str, str] | None = None) -> None:
        """Announce a change another program made (called by the watcher).
        ``renamed_to`` (root, path): the file was renamed there at once (a
        temporary file renamed over another); the announcement carries that
        file's size and times, as the reference's does."""
        log.debug("on-disk change: %s %s/%s (from %s)", action, root, rel, source)
        if renamed_to is not None and renamed_to[0] in self.roots:
            item = self._item(*renamed_to)
            item.update(path=rel, root=root)
            self._notify(action, item)
            return
        gcode = root == "gcodes" and not is_directory and is_gcode(rel)
        if source is not None and source[0] == "gcodes":
            self._forget_metadata(source[1], is_directory, remove_thumbs=not is_directory)
        if action in ("delete_file", "delete_dir"):
            if root == "gcodes":
                self._forget_metadata(rel, is_directory, remove_thumbs=not is_directory)
            self._notify(action, self._item(root, rel, deleted=True))
            return
        src = None if source is None else {"path": source[1], "root": source[0]}
        if gcode or (is_directory and root == "gcodes" and action == "move_dir"):
            gevent.spawn(self._scan_then_notify, action, root, rel, is_directory, src)
        else:
            self._notify(action, self._item(root, rel), src)

    def _scan_then_notify(self, action: str, root: str, rel: str, is_directory: bool,
                          src: dict[str, Any] | None) -> None:
        thumbs: list[tuple[str, str]] = []
        try:
            if is_directory:
                for entry in self._walk(self.roots[root], rel, gcode_only=True):
                    self.scan_metadata(entry["path"], priority=PRIO_BACKGROUND)
            else:
                thumbs = self.scan_with_thumbnails(rel, priority=PRIO_BACKGROUND)
        except Exception as err:
            log.info("metadata scan of %s failed: %s", rel, err)
        self._notify(action, self._item(root, rel), src)
        self._announce_thumbnails(thumbs)

    # -- listing -------------------------------------------------------------
    def _walk(self, root: Root, start: str = "", gcode_only: bool = False
              ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        top = join(root, start)
        stack = [(top, start)]
        seen: set[str] = set()
        writable = root.writable
        access = os.access
        while stack:
            folder, rel = stack.pop()
            try:
                real = os.path.realpath(folder)
                if real in seen:
                    continue
                seen.add(real)
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError:
                continue
            for e in entries:
                name = e.name
                if name.startswith("."):
                    continue
                path = f"{rel}/{name}" if rel else name
                try:
                    if e.is_dir():
                        stack.append((e.path, path))
                        continue
                    if gcode_only and not is_gcode(name):
                        continue
                    st = e.stat()
                except OSError:
                    continue
                if not access(e.path, os.R_OK):
                    perms = ""
                elif writable and access(e.path, os.W_OK):
                    perms = "rw"
                else:
                    perms = "r"
                out.append({"path": path, "modified": st.st_mtime, "size": st.st_size,
                            "permissions": perms})
        return out

    def list_files(self, root_name: str) -> list[dict[str, Any]]:
        """``server.files.list``: every file below the root (only gcode files
        in ``gcodes``), hidden entries skipped.  Cached while inotify
        reports no change."""
        root = self.roots.get(root_name) if isinstance(root_name, str) else None
        if root is None:
            raise ApiError(f"Failed to build file list, invalid path: {root_name}", 400)
        cached = self._list_cache.get(root_name)
        if cached is not None:
            return cached
        files = self._walk(root, "", gcode_only=root_name == "gcodes")
        if self.watcher is not None and self._greenlets:
            self._list_cache[root_name] = files
        return files

    def get_directory(self, path: str, extended: bool) -> dict[str, Any]:
        """``server.files.get_directory``."""
        root, rel, full = self.resolve(path, "path")
        if not is_dir(full):
            raise ApiError(f"Directory does not exist ({path})", 400)
        dirs: list[dict[str, Any]] = []
        files: list[dict[str, Any]] = []
        try:
            with os.scandir(full) as it:
                entries = list(it)
        except OSError as err:
            raise os_error(err, path) from None
        for e in entries:
            try:
                st = e.stat()
                folder = e.is_dir()
            except OSError:
                continue
            info = {"modified": st.st_mtime, "size": st.st_size,
                    "permissions": file_permissions(root, e.path)}
            if folder:
                info["dirname"] = e.name
                dirs.append(info)
            else:
                info["filename"] = e.name
                if extended and root.name == "gcodes" and is_gcode(e.name):
                    frel = f"{rel}/{e.name}" if rel else e.name
                    md = self.metadata.get_valid(frel, e.path)
                    if md:
                        info.update({k: v for k, v in md.items() if k not in info})
                files.append(info)
        usage = shutil.disk_usage(full)
        return {"dirs": dirs, "files": files,
                "disk_usage": {"total": usage.total, "used": usage.used, "free": usage.free},
                "root_info": {"name": root.name, "permissions": root.permissions}}

    # -- metadata -------------------------------------------------------------
    def _basic_metadata(self, full: str) -> dict[str, Any]:
        st = os.stat(full)
        return {"size": st.st_size, "modified": st.st_mtime}

    def scan_metadata(self, rel: str, priority: int = PRIO_REQUEST,
                      check_objects: bool = False) -> dict[str, Any]:
        """Extract and store the metadata of gcodes file ``rel``.

        A failed extraction stores the basic ``size``/``modified``.
        Raises: ApiError 404 when the file does not exist, 507 when its
        thumbnails cannot be written for a full disk (none is left partial)."""
        root = self.roots["gcodes"]
        full = join(root, rel)
        if not os.path.isfile(full):
            raise ApiError(f"File {rel} does not exist", 404)
        try:
            md = self.scanner.extract(full, root.path, check_objects=check_objects,
                                      priority=priority, timeout=self.parser_timeout)
            if not isinstance(md, dict):
                raise ScanError("no metadata")
        except (ScanError, gevent.Timeout) as err:
            if is_disk_full(err):
                raise disk_full_error(f"the thumbnails of {rel}") from None
            log.info("metadata extraction for %s failed: %s", rel, err)
            md = self._basic_metadata(full)
        old = self.metadata.get(rel) or {}
        for key in ("print_start_time", "job_id"):
            md.setdefault(key, old.get(key))
        self.metadata.insert(rel, md)
        return md

    def get_metadata(self, rel: str) -> dict[str, Any] | None:
        """Stored metadata of gcodes file ``rel`` (scanned now when missing or
        stale), or None when the file does not exist."""
        full = join(self.roots["gcodes"], rel)
        try:
            st = os.stat(full)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        md = self.metadata.get_valid(rel, full, st)
        if md is None:
            try:
                md = self.scan_metadata(rel)
            except ApiError as err:
                if err.status != 507:
                    raise
                md = self._basic_metadata(full)   # a full disk: reads still answer
        return md

    def scan_with_thumbnails(self, rel: str, priority: int = PRIO_REQUEST,
                             check_objects: bool = False) -> list[tuple[str, str]]:
        """Scan ``rel`` and return the thumbnails it wrote as
        ``(action, gcodes-relative path)``: ``create_file`` for new ones,
        ``modify_file`` for replaced ones (as Moonraker announces them)."""
        folder_rel = os.path.dirname(rel)
        thumbs_dir = join(self.roots["gcodes"], f"{folder_rel}/.thumbs" if folder_rel
                          else ".thumbs")
        try:
            before = set(os.listdir(thumbs_dir))
        except OSError:
            before = set()
        try:
            md = self.scan_metadata(rel, priority=priority, check_objects=check_objects)
        except ApiError as err:
            if err.status == 507:   # a full disk
                raise
            return []
        out = []
        for th in md.get("thumbnails") or []:
            rp = th.get("relative_path") if isinstance(th, dict) else None
            if not rp:
                continue
            path = f"{folder_rel}/{rp}" if folder_rel else rp
            action = "modify_file" if os.path.basename(rp) in before else "create_file"
            out.append((action, path))
        return out

    def _announce_thumbnails(self, thumbs: list[tuple[str, str]]) -> None:
        for action, path in thumbs:
            self._notify(action, self._item("gcodes", path))

    def update_metadata(self, rel: str, fields: dict[str, Any]) -> None:
        """Merge ``fields`` (e.g. ``print_start_time``, ``job_id`` from the
        history component) into the stored metadata of ``rel``."""
        md = self.metadata.get(rel)
        if md is not None:
            md = dict(md)
            md.update(fields)
            self.metadata.insert(rel, md)

    def _forget_metadata(self, rel: str, directory: bool, remove_thumbs: bool = True) -> None:
        if directory:
            prefix = rel + "/" if rel else ""
            for key in self.metadata.keys():
                if key.startswith(prefix):
                    self.metadata.delete(key)
            return
        md = self.metadata.get(rel)
        self.metadata.delete(rel)
        if remove_thumbs and md:
            folder = os.path.dirname(join(self.roots["gcodes"], rel))
            for th in md.get("thumbnails") or []:
                rp = th.get("relative_path") if isinstance(th, dict) else None
                if not rp:
                    continue
                try:
                    tpath = os.path.join(folder, clean_relative(rp))
                    os.unlink(tpath)
                except (OSError, ApiError):
                    pass

    # -- operations -------------------------------------------------------------
    def make_directory(self, path: str) -> dict[str, Any]:
        """``server.files.post_directory``."""
        root, rel, full = self.resolve(path, "path", write=True)
        if rel == "":
            raise ApiError(f"Directory already exists ({path})", 400)
        if os.path.lexists(full):
            raise ApiError(f"File exists: {path}", 400)
        with self.suppress((root.name, rel)):
            try:
                os.mkdir(full)
            except OSError as err:
                raise os_error(err, path) from None
        result = {"item": self._item(root.name, rel), "action": "create_dir"}
        self._notify("create_dir", result["item"])
        return result

    def delete_directory(self, path: str, force: bool) -> dict[str, Any]:
        """``server.files.delete_directory``."""
        root, rel, full = self.resolve(path, "path", write=True)
        if rel == "":
            raise ApiError("Cannot delete root directory", 400)
        if not is_dir(full):
            raise ApiError(f"Directory does not exist ({path})", 400)
        self.check_not_printing(root, rel)
        with self.suppress((root.name, rel)):
            try:
                if os.path.islink(full):
                    os.unlink(full)
                elif force:
                    threadpool(shutil.rmtree, full)
                else:
                    os.rmdir(full)
            except OSError as err:
                if err.errno == 39:
                    raise ApiError(f"Directory not empty ({path})", 400) from None
                raise os_error(err, path) from None
        if root.name == "gcodes":
            self._forget_metadata(rel, True)
        result = {"item": self._item(root.name, rel, deleted=True), "action": "delete_dir"}
        self._notify("delete_dir", result["item"])
        return result

    def delete_file(self, path: str) -> dict[str, Any]:
        """``server.files.delete_file`` and ``DELETE /server/files/{root}/{path}``."""
        root, rel, full = self.resolve(path, "path")
        if not root.writable:
            raise ApiError(f"Path not available for DELETE: {path}", 405)
        if rel == "" or not os.path.lexists(full) or (is_dir(full) and not os.path.islink(full)):
            raise ApiError(f"Invalid file path: {path}", 400)
        self.check_not_printing(root, rel)
        with self.suppress((root.name, rel)):
            try:
                os.unlink(full)
            except OSError as err:
                raise os_error(err, path) from None
        if root.name == "gcodes":
            self._forget_metadata(rel, False)
        result = {"item": self._item(root.name, rel, deleted=True), "action": "delete_file"}
        self._notify("delete_file", result["item"])
        return result

    def move(self, source: str, dest: str, copy: bool = False) -> dict[str, Any]:
        """``server.files.move`` / ``server.files.copy``."""
        src_root, src_rel, src_full = self.resolve(source, "source")
        dst_root, dst_rel, dst_full = self.resolve(dest, "dest")
        if not copy and not src_root.writable:
            raise ApiError(f"Source path is read-only: {src_root.name}", 400)
        if not dst_root.writable:
            raise ApiError(f"Destination path is read-only: {dst_root.name}", 400)
        if src_rel == "":
            raise ApiError("Cannot move or copy a root directory", 400)
        if dst_rel == "" and not copy:
            dst_full = dst_root.path
        if not os.path.lexists(src_full):
            raise ApiError(f"File {source} does not exist", 400)
        src_is_dir = is_dir(src_full)
        if not copy:
            self.check_not_printing(src_root, src_rel)
        # like shutil.move: a directory destination receives the source
        if is_dir(dst_full):
            base = os.path.basename(src_rel)
            dst_rel = f"{dst_rel}/{base}" if dst_rel else base
            dst_full = join(dst_root, dst_rel)
        if src_full == dst_full:
            raise ApiError("Source and destination are the same", 400)
        if os.path.realpath(dst_full).startswith(os.path.realpath(src_full) + os.sep):
            raise ApiError("Cannot move or copy a directory into itself", 400)
        self.check_not_printing(dst_root, dst_rel)
        existed = os.path.lexists(dst_full)
        if existed and src_is_dir:
            raise ApiError(f"Destination {dest} already exists", 400)
        with self.suppress((src_root.name, src_rel), (dst_root.name, dst_rel)):
            try:
                if copy:
                    if src_is_dir:
                        threadpool(shutil.copytree, src_full, dst_full, True)
                    else:
                        threadpool(shutil.copy2, src_full, dst_full)
                else:
                    try:
                        os.rename(src_full, dst_full)
                    except OSError as err:
                        if err.errno != 18:   # EXDEV: another file system
                            raise
                        threadpool(shutil.move, src_full, dst_full)
            except OSError as err:
                if copy and not existed and is_disk_full(err):   # no partial copy left
                    if is_dir(dst_full):
                        threadpool(shutil.rmtree, dst_full, True)
                    else:
                        _unlink_quiet(dst_full)
                raise os_error(err, source) from None
            if not copy and src_root.name == "gcodes":
                self._forget_metadata(src_rel, src_is_dir)
            if dst_root.name == "gcodes":
                self._rescan_tree(dst_rel, src_is_dir)
        item = self._item(dst_root.name, dst_rel)
        if copy:
            action = "create_dir" if src_is_dir else ("modify_file" if existed
                                                       else "create_file")
            result = {"item": item, "action": action}
            self._notify(action, item)
        else:
            action = "move_dir" if src_is_dir else "move_file"
            src_item = {"path": src_rel, "root": src_root.name}
            result = {"item": item, "source_item": src_item, "action": action}
            self._notify(action, item, src_item)
        return result

    def _rescan_tree(self, rel: str, directory: bool) -> None:
        if directory:
            targets = [e["path"] for e in self._walk(self.roots["gcodes"], rel, True)]
        elif is_gcode(rel):
            targets = [rel]
        else:
            targets = []
        for t in targets:
            try:
                self.scan_metadata(t)
            except ApiError:
                pass

    def zip_files(self, dest: str | None, items: list, store_only: bool) -> dict[str, Any]:
        """``server.files.zip``: files of each item (directories: their files,
        not recursively) into the archive ``dest``."""
        if dest is None:
            dest = time.strftime("config/collection-%Y%m%d-%H%M%S.zip")
        dst_root, dst_rel, dst_full = self.resolve(dest, "dest")
        if not dst_root.writable:
            raise ApiError(f"Destination Root '{dst_root.name}' is read-only", 400)
        if dst_rel == "" or not dst_rel.lower().endswith(".zip"):
            raise ApiError(f"Invalid zip destination: {dest}", 400)
        if not os.path.isdir(os.path.dirname(dst_full)):
            raise ApiError(f"Destination folder does not exist: {dest}", 400)
        if not isinstance(items, list) or not items:
            raise ApiError("No items to zip", 400)
        members: list[tuple[str, str]] = []
        for raw in items:
            root, rel, full = self.resolve(raw, "items")
            if not os.path.exists(full):
                raise ApiError(f"No file/directory exits at '{raw}'", 400)
            if is_dir(full):
                with os.scandir(full) as it:
                    for e in it:
                        if e.is_file() and os.access(e.path, os.R_OK):
                            members.append((e.path, os.path.join(root.name, rel, e.name)))
            else:
                members.append((full, os.path.join(root.name, rel)))
        import zipfile  # loaded on first use (1.7 MiB with bz2, lzma)
        method = zipfile.ZIP_STORED if store_only else zipfile.ZIP_DEFLATED
        tmp = os.path.join(os.path.dirname(dst_full), f".{os.path.basename(dst_full)}.part")

        def build() -> None:
            with zipfile.ZipFile(tmp, "w", compression=method) as zf:
                for path, arc in members:
                    zf.write(path, arc)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dst_full)

        with self.suppress((dst_root.name, dst_rel)):
            try:
                threadpool(build)
            except OSError as err:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise os_error(err, dest) from None
        item = self._item(dst_root.name, dst_rel)
        self._notify("create_file", item)
        return {"destination": item, "action": "zip_files"}

    # -- what the file endpoints ask ---------------------------------------------
    @staticmethod
    def gcode_path(raw: str) -> str:
        """The cleaned gcodes-relative path of a ``filename`` argument.
        Raises: ApiError 403 (absolute path, ``..``), 400 (bad name)."""
        if raw.startswith("/"):
            raise ApiError("Invalid path in argument [filename]: absolute paths are not "
                           "allowed", 403)
        return clean_relative(raw, "filename")

    def metadata_of(self, raw: str) -> dict[str, Any]:
        """``server.files.metadata``: the cached (or freshly scanned) metadata
        of gcode ``raw`` with its ``filename``.
        Raises: ApiError 404 "Metadata not available for <FILE>"."""
        rel = self.gcode_path(raw)
        md = self.get_metadata(rel) if rel and is_gcode(rel) else None
        if md is None:
            raise ApiError(f"Metadata not available for <{rel}>", 404)
        return dict(md, filename=rel)

    def rescan(self, raw: str) -> dict[str, Any]:
        """``server.files.metascan``: forget and scan gcode ``raw`` again.
        Raises: ApiError 404 when the file does not exist."""
        rel = self.gcode_path(raw)
        if not rel or not os.path.isfile(join(self.roots["gcodes"], rel)):
            raise ApiError(f"File '{rel}' does not exist", 404)
        self._forget_metadata(rel, False, remove_thumbs=False)
        return dict(self.scan_metadata(rel), filename=rel)

    def thumbnails_of(self, raw: str) -> list[dict[str, Any]]:
        """``server.files.thumbnails``: each thumbnail of gcode ``raw`` with its
        ``thumbnail_path`` relative to the gcodes root (``[]`` without metadata)."""
        rel = self.gcode_path(raw)
        md = self.get_metadata(rel) if rel and is_gcode(rel) else None
        folder = os.path.dirname(rel)
        out = []
        for th in (md or {}).get("thumbnails") or []:
            th = dict(th)
            rp = th.pop("relative_path", "")
            th["thumbnail_path"] = f"{folder}/{rp}" if folder else rp
            out.append(th)
        return out

    def download_path(self, root_name: str, filename: str) -> str:
        """The absolute path of ``root_name/filename`` for a download.
        Raises: ApiError 404 (no such root or file), 403 (unreadable), 400/403
        (a name escaping its root)."""
        root = self.roots.get(root_name)
        if root is None:
            raise ApiError("Not Found", 404)
        rel = clean_relative(filename, "filename")
        full = join(root, rel)
        if not rel or not os.path.isfile(full):
            raise ApiError("File does not exist", 404)
        if not os.access(full, os.R_OK):
            raise ApiError("File is not readable", 403)
        return full

    def log_path(self, application: str) -> str:
        """The log file of ``application`` (``klippy``: Klippy's ``log_file``;
        ``moonraker``: this server's).  Raises: ApiError 404 when absent."""
        data_logs = os.path.join(self.server.data_path, "logs")
        if application == "klippy":
            path = (self.server.klippy.info or {}).get("log_file") or \
                os.path.join(data_logs, "klippy.log")
        else:
            path = self.server.logs.log_file or os.path.join(data_logs, "moonraker.log")
        if not os.path.isfile(path):
            raise ApiError("File does not exist", 404)
        return path

    # -- uploads -------------------------------------------------------------
    def set_upload_print_handler(self, handler: Callable[[str], Any] | None) -> None:
        """Let the job queue decide what ``print=true`` does.

        ``handler(filename)`` gets the gcodes-relative path of the finished
        upload and returns ``(print_started: bool, print_queued: bool)``;
        None restores the default (start the print through Klippy when idle).
        """
        self._upload_print_handler = handler


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def load_component(server: Any, config: Any) -> FileManager:
    """Create the file manager (``[file_manager]`` may be absent)."""
    section = config if config is not None else server.config.section("file_manager")
    return FileManager(server, section)
