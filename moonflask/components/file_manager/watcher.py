"""Changes made on disk by other programs -> ``notify_filelist_changed``.

One inotify instance watches every directory of every root (``.thumbs``
folders excepted: the file manager announces thumbnails after each scan).  Its file descriptor is read from
a greenlet (``gevent.socket.wait_read``), so nothing blocks the hub.  Each
batch of events is turned into Moonraker's actions: ``create_file`` (after
the writer closes the file), ``modify_file``, ``delete_file``,
``create_dir``, ``delete_dir``, ``move_file``/``move_dir`` (a rename inside
the watched roots; a move in from elsewhere is a create, a move out a
delete).  Changes the file manager makes itself are suppressed here: it
announces those with its own, bundled, notifications.

Spec: web_api.md Appendix "File List Changed".
"""
from __future__ import annotations

import fcntl
import logging
import os
from typing import Any

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

WATCH_MASK = (flags.CREATE | flags.CLOSE_WRITE | flags.DELETE | flags.MOVED_FROM
              | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF | flags.ATTRIB)
TEMP_SUFFIXES = (".mfpart", ".mfufp", ".part")
THUMBS = ".thumbs"   # thumbnails are announced by the file manager after a scan


def is_temp(name: str) -> bool:
    """True for the file manager's own temporary files (never announced)."""
    return name.startswith(".") and (name.startswith(".mfupload-")
                                      or name.endswith(TEMP_SUFFIXES))


def is_hidden(rel: str) -> bool:
    """True when a part of the root-relative path ``rel`` starts with a dot."""
    return any(part.startswith(".") for part in rel.split("/"))


class FileWatcher:
    """Watches the roots of ``manager`` (a FileManager).

    The manager provides ``roots`` (name -> Root), ``mark_dirty(root)``,
    ``is_suppressed(root, rel)`` and ``on_disk_change(action, root, rel,
    is_dir, source=None)``.
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.inotify = INotify()
        fd = self.inotify.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.wds: dict[int, tuple[str, str]] = {}       # wd -> (root, rel dir)
        self.paths: dict[tuple[str, str], int] = {}      # (root, rel dir) -> wd
        self._created: set[tuple[str, str]] = set()      # files created, not yet closed

    # -- watches ------------------------------------------------------------
    def watch_root(self, name: str) -> None:
        """Watch root ``name`` and every non-hidden directory below it."""
        self.unwatch_root(name)
        root = self.manager.roots.get(name)
        if root is not None:
            self._watch_tree(name, "")

    def unwatch_root(self, name: str) -> None:
        """Stop watching root ``name``."""
        for key in [k for k in self.paths if k[0] == name]:
            self._rm_watch(key)

    def _watch_tree(self, root_name: str, rel: str) -> None:
        root = self.manager.roots[root_name]
        top = os.path.join(root.path, rel) if rel else root.path
        stack = [(top, rel)]
        seen: set[str] = set()
        while stack:
            full, r = stack.pop()
            real = os.path.realpath(full)
            if real in seen:   # symlink loops
                continue
            seen.add(real)
            try:
                wd = self.inotify.add_watch(full, WATCH_MASK)
            except OSError as err:
                log.warning("inotify: cannot watch %s: %s", full, err)
                continue
            self.wds[wd] = (root_name, r)
            self.paths[(root_name, r)] = wd
            try:
                with os.scandir(full) as it:
                    for entry in it:
                        if is_temp(entry.name) or entry.name == THUMBS \
                                or not entry.is_dir():
                            continue
                        stack.append((entry.path, f"{r}/{entry.name}" if r else entry.name))
            except OSError:
                pass

    def _rm_watch(self, key: tuple[str, str]) -> None:
        wd = self.paths.pop(key, None)
        if wd is None:
            return
        self.wds.pop(wd, None)
        try:
            self.inotify.rm_watch(wd)
        except OSError:
            pass

    def _rename_tree(self, root: str, old: str, new_root: str, new: str) -> None:
        for key in [k for k in self.paths if k[0] == root and
                    (k[1] == old or k[1].startswith(old + "/"))]:
            wd = self.paths.pop(key)
            rel = new + key[1][len(old):]
            self.paths[(new_root, rel)] = wd
            self.wds[wd] = (new_root, rel)

    def _drop_tree(self, root: str, rel: str) -> None:
        for key in [k for k in self.paths if k[0] == root and
                    (k[1] == rel or k[1].startswith(rel + "/"))]:
            self._rm_watch(key)

    # -- events (the loop is workers/file_watcher.py) ------------------------
    def fileno(self) -> int:
        """The inotify descriptor (readable when events are pending)."""
        return self.inotify.fileno()

    def dispatch_pending(self) -> None:
        """Read the pending events without blocking and dispatch them."""
        try:
            events = self.inotify.read(timeout=0)
        except BlockingIOError:
            return
        if events:
            self._process(events)

    def close(self) -> None:
        """Release the inotify descriptor."""
        try:
            self.inotify.close()
        except OSError:
            pass

    def _process(self, events: list[Any]) -> None:
        mgr = self.manager
        moved_from: dict[int, tuple[str, str, bool]] = {}
        out: list[tuple] = []
        for ev in events:
            if ev.mask & flags.Q_OVERFLOW:
                log.warning("inotify queue overflow; file lists rebuilt")
                for name in list(mgr.roots):
                    mgr.mark_dirty(name)
                continue
            loc = self.wds.get(ev.wd)
            if loc is None:
                continue
            root, reldir = loc
            if ev.mask & flags.IGNORED:
                self.wds.pop(ev.wd, None)
                if self.paths.get(loc) == ev.wd:
                    self.paths.pop(loc, None)
                continue
            if ev.mask & (flags.DELETE_SELF | flags.MOVE_SELF):
                if reldir == "":
                    mgr.mark_dirty(root)
                continue
            name = ev.name
            if not name or is_temp(name) or name == THUMBS or \
                    THUMBS in reldir.split("/"):
                continue
            rel = f"{reldir}/{name}" if reldir else name
            is_dir = bool(ev.mask & flags.ISDIR)
            mgr.mark_dirty(root)
            if ev.mask & flags.MOVED_FROM:
                moved_from[ev.cookie] = (root, rel, is_dir)
                if is_dir:
                    self._rename_tree(root, rel, root, "\x00moving/" + rel)
                continue
            if ev.mask & flags.MOVED_TO:
                src = moved_from.pop(ev.cookie, None)
                if is_dir:
                    if src is not None:
                        self._rename_tree(src[0], "\x00moving/" + src[1], root, rel)
                    else:
                        self._watch_tree(root, rel)
                if src is not None:
                    mgr.mark_dirty(src[0])
                    out.append(("move_dir" if is_dir else "move_file", root, rel, is_dir, src))
                else:
                    out.append(("create_dir" if is_dir else "create_file", root, rel,
                                is_dir, None))
                continue
            if ev.mask & flags.CREATE:
                if is_dir:
                    self._watch_tree(root, rel)
                    out.append(("create_dir", root, rel, True, None))
                elif os.path.islink(os.path.join(mgr.roots[root].path, rel)):
                    out.append(("create_file", root, rel, False, None))
                else:
                    self._created.add((root, rel))
                continue
            if ev.mask & flags.CLOSE_WRITE:
                if (root, rel) in self._created:
                    self._created.discard((root, rel))
                    out.append(("create_file", root, rel, False, None))
                else:
                    out.append(("modify_file", root, rel, False, None))
                continue
            if ev.mask & flags.DELETE:
                self._created.discard((root, rel))
                if is_dir:
                    self._drop_tree(root, rel)
                out.append(("delete_dir" if is_dir else "delete_file", root, rel, is_dir, None))
                continue
        for src_root, src_rel, is_dir in moved_from.values():   # moved out of the roots
            if is_dir:
                self._drop_tree(src_root, "\x00moving/" + src_rel)
            out.append(("delete_dir" if is_dir else "delete_file", src_root, src_rel,
                        is_dir, None))
        # a file created then renamed in this batch (a temporary file renamed
        # over another): its create_file describes the file it became
        renamed = {(s[0], s[1]): (r, p) for _a, r, p, _d, s in out if s is not None}
        for action, root, rel, is_dir, src in out:
            if is_hidden(rel):
                # Hidden files are not listed, so not announced (as the
                # reference): a temporary file that an editor or a sync tool
                # renames over a file appears only as that file's move_file.
                if src is None or is_hidden(src[1]):
                    continue
                action, root, rel, src = ("delete_dir" if is_dir else "delete_file",
                                          src[0], src[1], None)
            if mgr.is_suppressed(root, rel) or (src is not None and
                                                 mgr.is_suppressed(src[0], src[1])):
                continue
            extra = {}
            if action == "create_file" and (root, rel) in renamed:
                extra["renamed_to"] = renamed[(root, rel)]
            try:
                mgr.on_disk_change(action, root, rel, is_dir,
                                   None if src is None else (src[0], src[1]), **extra)
            except Exception:
                log.exception("handling %s %s/%s failed", action, root, rel)
