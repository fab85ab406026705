"""Finishing uploads for the file manager: validate the destination and the
checksum, place the streamed temporary file (atomic rename, fsync), unpack
UFP, scan metadata, announce ``create_file`` and start the print when asked.
Spec: web_api.md "File upload".  The streaming multipart parser itself is
:mod:`.uploads` (loaded with the first upload)."""
from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any

from ...api import ApiError
from .roots import WRITABLE_ROOTS, clean_relative, is_dir, is_gcode, join, os_error, threadpool
from .scanner import ScanError

log = logging.getLogger(__name__)


class UploadMixin:
    """The upload methods of :class:`.manager.FileManager`."""

    def _start_print(self, rel: str) -> tuple[bool, bool]:
        if self._upload_print_handler is not None:
            started, queued = self._upload_print_handler(rel)
            return bool(started), bool(queued)
        klippy = self.server.klippy
        if klippy.state != "ready":
            return False, False
        ps = klippy.status.get("print_stats") or {}
        if ps.get("state") in ("printing", "paused"):
            return False, False
        name = rel.replace('"', '\\"')
        try:
            self.server.events.emit("printer:print_start_requested", rel)
            klippy.request("gcode/script", {"script": f'SDCARD_PRINT_FILE FILENAME="{name}"'})
        except ApiError as err:
            log.info("print of uploaded %s not started: %s", rel, err.message)
            return False, False
        return True, False

    def handle_upload(self, request: Any, default_root: str = "gcodes",
                      force_print: bool | None = None) -> dict[str, Any]:
        """``POST /server/files/upload`` (and OctoPrint's ``/api/files/local``).

        Streams the body to a hidden temporary file in the destination root,
        checks the checksum, renames it into place, scans gcode metadata,
        announces ``create_file`` and starts the print when asked.
        Returns: the upload result (``item``, ``action``, and for gcodes
        ``print_started``/``print_queued``); extra key ``_fields`` holds the
        form fields (removed by the HTTP handler).
        Raises: ApiError 400/403/413/422, 507 when the disk is full (nothing
        of the upload is left).
        """
        def choose_dir(fields: dict[str, str]) -> str:
            root = self.roots.get(fields.get("root", default_root).strip().lower() or
                                  default_root)
            if root is None or not root.writable:
                root = self.roots[default_root]
            return root.path

        from . import uploads  # streaming_form_data is large: loaded with the first upload
        up = uploads.receive(request, choose_dir, self.server.max_upload_size)
        try:
            return self._finish_upload(up, default_root, force_print)
        finally:
            up.discard()

    def _finish_upload(self, up: Any, default_root: str,
                       force_print: bool | None) -> dict[str, Any]:
        fields = up.fields
        root_name = (fields.get("root") or default_root).strip().lower()
        root = self.roots.get(root_name)
        if root is None:
            raise ApiError(f"Root {root_name} not available", 400)
        if root_name not in WRITABLE_ROOTS or not root.writable:
            raise ApiError(f"Invalid root request: {root_name}", 400)
        filename = up.filename.strip()
        if not filename:
            raise ApiError("Multipart filename omitted", 400)
        raw_sub = fields.get("path", "")
        if raw_sub.startswith("/") or filename.startswith("/"):
            raise ApiError("Invalid path in argument [path]: absolute paths are not allowed",
                           403)
        sub = clean_relative(raw_sub, "path")
        name_rel = clean_relative(filename, "filename")
        if not name_rel:
            raise ApiError(f"Invalid file name: {filename}", 400)
        rel = f"{sub}/{name_rel}" if sub else name_rel
        full = join(root, rel)
        checksum = fields.get("checksum", "").strip().lower()
        if checksum and checksum != up.sha256:
            raise ApiError(f"File checksum mismatch: expected {checksum}, "
                           f"calculated {up.sha256}", 422)
        if is_dir(full):
            raise ApiError(f"Invalid file name, a directory exists: {rel}", 400)
        try:
            self.check_not_printing(root, rel)
        except ApiError:
            raise ApiError("File is loaded, upload not permitted", 403) from None
        folder = os.path.dirname(full)
        if sub:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as err:
                raise os_error(err, sub) from None
        elif not os.path.isdir(folder):
            raise ApiError(f"Directory does not exist: {os.path.dirname(rel)}", 400)
        ufp = root_name == "gcodes" and rel.lower().endswith(".ufp")
        if ufp:
            rel = rel[:-4] + ".gcode"
            full = join(root, rel)
        with self.suppress((root.name, rel)):
            try:
                if ufp:
                    tmp_gcode = os.path.join(folder, f".{os.path.basename(full)}.mfufp")
                    try:
                        self.scanner.unpack_ufp(up.temp_path, tmp_gcode)
                        os.replace(tmp_gcode, full)
                    except ScanError as err:
                        raise ApiError(f"Unable to unpack UFP file: {err}", 400) from None
                    finally:
                        if os.path.exists(tmp_gcode):
                            os.unlink(tmp_gcode)
                else:
                    self._place(up.temp_path, full)
                    up.temp_path = None
                fsync_dir(folder)
            except OSError as err:
                raise os_error(err, rel) from None
        thumbs: list[tuple[str, str]] = []
        if root.name == "gcodes" and is_gcode(rel):
            self.metadata.delete(rel)
            try:
                thumbs = self.scan_with_thumbnails(rel,
                                                   check_objects=self.enable_object_processing)
            except ApiError as err:
                if err.status == 507:   # a full disk: the upload is refused whole
                    self._remove_upload(root, rel, full)
                raise
        item = self._item(root.name, rel)
        result: dict[str, Any] = {"item": item, "action": "create_file"}
        print_requested = False
        if root.name == "gcodes" and is_gcode(rel):
            want = fields.get("print", "false").strip().lower() == "true"
            print_requested = want if force_print is None else force_print
            started = queued = False
            if print_requested:
                started, queued = self._start_print(rel)
            result["print_started"] = started
            result["print_queued"] = queued
        self._notify("create_file", item)
        self._announce_thumbnails(thumbs)
        self.server.events.emit("file_manager:upload_complete", {
            "root": root.name, "path": rel, "print_requested": print_requested,
            "size": item.get("size"), "checksum": up.sha256})
        result["_fields"] = fields
        return result

    def _remove_upload(self, root: Any, rel: str, full: str) -> None:
        """Remove the placed upload ``rel`` and the thumbnails written for it
        (its upload failed after the rename: the disk filled)."""
        stem = re.escape(os.path.splitext(os.path.basename(rel))[0])
        pattern = re.compile(stem + r"-\d+x\d+\.(png|jpg)")
        thumbs = os.path.join(os.path.dirname(full), ".thumbs")
        with self.suppress((root.name, rel)):
            for path in [full] + [os.path.join(thumbs, n) for n in _listdir(thumbs)
                                  if pattern.fullmatch(n)]:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    @staticmethod
    def _place(temp: str, dest: str) -> None:
        try:
            os.replace(temp, dest)
        except OSError as err:
            if err.errno != 18:    # EXDEV: the destination is on another file system
                raise
            part = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.mfpart")
            threadpool(shutil.copyfile, temp, part)
            with open(part, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(part, dest)
            os.unlink(temp)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def fsync_dir(folder: str) -> None:
    """fsync the directory ``folder`` (a rename in it is then durable);
    errors are ignored."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


