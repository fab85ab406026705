"""File roots and client path resolution.  Spec: web_api.md "File Operations".

A *root* is a named directory (``gcodes``, ``config``, ``logs``,
``config_examples``, ``docs``).  Every path a client sends is resolved
lexically inside its root by :func:`resolve`: NUL bytes, ``..`` components,
absolute paths and over-long names are refused with an ApiError (400/403)
before anything touches the disk.  Symlinks that the machine's owner placed
inside a root (a USB drive linked into ``gcodes``) are followed, as Moonraker
does; nothing a client sends can create one, and deleting or moving a link
acts on the link itself, never on what it points to.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

import gevent

from ...api import ApiError, disk_full_error, is_disk_full

GCODE_EXTENSIONS = (".gcode", ".g", ".gco", ".ufp", ".nc")
WRITABLE_ROOTS = ("gcodes", "config")
NAME_MAX = 255          # bytes per path component (Linux)
PATH_MAX = 4096         # bytes per path


@dataclass
class Root:
    """A registered root: ``name``, absolute ``path`` and ``permissions``
    (``"rw"`` or ``"r"``)."""

    name: str
    path: str
    permissions: str

    @property
    def writable(self) -> bool:
        """True when clients may write in this root."""
        return "w" in self.permissions

    def info(self) -> dict[str, Any]:
        """``server.files.roots`` entry."""
        return {"name": self.name, "path": self.path, "permissions": self.permissions}


def is_gcode(name: str) -> bool:
    """True when ``name`` has a gcode extension (``.gcode .g .gco .ufp .nc``)."""
    return name.lower().endswith(GCODE_EXTENSIONS)


def clean_relative(rel: str, arg: str = "path") -> str:
    """Normalise a client path relative to a root.

    Args:
        rel: the client's path below the root (``sub/file.gcode``); leading
            and repeated slashes are dropped, ``.`` components removed.
        arg: the argument name quoted in errors.
    Returns: the cleaned path (``""`` for the root itself).
    Raises:
        ApiError 400 for NUL bytes or over-long names, 403 for ``..``
        components (a path leaving its root).
    """
    if not isinstance(rel, str):
        raise ApiError(f"Invalid argument type [{arg}]", 400)
    if "\x00" in rel:
        raise ApiError(f"Invalid path in argument [{arg}]: NUL byte", 400)
    if "\\" in rel:
        rel = rel.replace("\\", "/")
    parts = []
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ApiError(f"Invalid path in argument [{arg}]: "
                           "path leaves its root", 403)
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise ApiError(f"Invalid path in argument [{arg}]: name too long", 400)
        parts.append(part)
    out = "/".join(parts)
    if len(out.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise ApiError(f"Invalid path in argument [{arg}]: path too long", 400)
    return out


def split_root(full: str, arg: str = "path") -> tuple[str, str]:
    """Split ``root/rest`` into ``(root, rest)``; an absolute client path
    (``/etc``) is refused with 403 (it names no root)."""
    if not isinstance(full, str):
        raise ApiError(f"Invalid argument type [{arg}]", 400)
    if full.startswith("/"):
        raise ApiError(f"Invalid path in argument [{arg}]: absolute paths "
                       "are not allowed", 403)
    root, _, rest = full.partition("/")
    return root, rest


def join(root: Root, rel: str) -> str:
    """The on-disk path of ``rel`` (already cleaned) in ``root``."""
    return os.path.join(root.path, rel) if rel else root.path


def file_permissions(root: Root, full: str, st: os.stat_result | None = None) -> str:
    """Moonraker's per-entry permissions: ``""`` when unreadable, ``"r"`` in
    a read-only root or for files we cannot write, else ``"rw"``."""
    if not os.access(full, os.R_OK):
        return ""
    if not root.writable or not os.access(full, os.W_OK):
        return "r"
    return "rw"


def stat_info(root: Root, full: str) -> dict[str, Any]:
    """``{"modified", "size", "permissions"}`` of ``full`` (follows links).

    Raises: ApiError 404 when it does not exist."""
    try:
        st = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        raise ApiError(f"Path not found: {os.path.relpath(full, root.path)}", 404) from None
    except OSError as err:
        raise ApiError(f"Unable to access path: {err.strerror}", 400) from None
    return {"modified": st.st_mtime, "size": st.st_size,
            "permissions": file_permissions(root, full, st)}


def is_dir(path: str) -> bool:
    """True for a directory (following links)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def threadpool(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking ``fn(*args)`` in gevent's threadpool and return its result.
    An exception is re-raised in the caller's greenlet (raised in the worker
    thread, gevent prints it to stderr first: on a full disk that fails too
    and the caller would wait forever)."""
    def call() -> tuple[bool, Any]:
        try:
            return True, fn(*args)
        except BaseException as err:   # noqa: B036 (handed to the caller)
            return False, err
    ok, value = gevent.get_hub().threadpool.apply(call)
    if not ok:
        raise value
    return value


def os_error(err: OSError, rel: str) -> ApiError:
    """An OSError as a client error that names the root-relative path only
    (a full disk: 507 "No space left on device", see api.disk_full_error)."""
    if is_disk_full(err):
        return disk_full_error(rel)
    return ApiError(f"{err.strerror or 'Error'}: {rel}", 400)
