"""Streaming multipart uploads.  Spec: web_api.md "File upload".

:func:`receive` parses a ``multipart/form-data`` body with
streaming-form-data as it arrives: the ``file`` part goes straight to a
hidden temporary file in the destination root (hashed with SHA256 on the
way), the small fields (``root``, ``path``, ``checksum``, ``print``,
``select``) are kept in memory.  Nothing is buffered whole; the caller
renames the temporary file into place once everything checked out, or
removes it (:meth:`Upload.discard`).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Callable

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget, ValueTarget
from werkzeug.exceptions import ClientDisconnected

from ...api import ApiError, disk_full_error, is_disk_full

CHUNK = 256 * 1024          # bytes read from the socket at a time
FIELD_LIMIT = 64 * 1024     # bytes kept for a non-file field
TEMP_PREFIX = ".mfupload-"
FIELDS = ("root", "path", "checksum", "print", "select", "filename")


class _Field(ValueTarget):
    _size = 0

    def on_data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > FIELD_LIMIT:
            raise ApiError("Form field too large", 400)
        super().on_data_received(chunk)


class _FileTarget(BaseTarget):
    """Writes the ``file`` part to a temporary file chosen when it starts."""

    def __init__(self, choose_dir: Callable[[], str]) -> None:
        super().__init__()
        self.choose_dir = choose_dir
        self.fd: int | None = None
        self.temp_path: str | None = None
        self.sha = hashlib.sha256()
        self.size = 0
        self.started = False
        self.finished = False
        self.filename: str | None = None

    def on_start(self) -> None:
        if self.started:
            raise ApiError("Only one file may be uploaded per request", 400)
        self.started = True
        self.filename = self.multipart_filename
        folder = self.choose_dir()
        self.temp_path = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}.part")
        self.fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def on_data_received(self, chunk: bytes) -> None:
        if self.fd is None:
            return
        self.sha.update(chunk)
        self.size += len(chunk)
        view = memoryview(chunk)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def on_finish(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
        self.finished = True

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


class Upload:
    """A received upload: ``fields`` (str values), ``filename`` (as the
    client named it), ``temp_path``, ``size`` (bytes), ``sha256`` (hex)."""

    def __init__(self, target: _FileTarget, fields: dict[str, str]) -> None:
        self.fields = fields
        self.filename = target.filename or ""
        self.temp_path = target.temp_path
        self.size = target.size
        self.sha256 = target.sha.hexdigest()

    def discard(self) -> None:
        """Remove the temporary file (no error when it is gone)."""
        if self.temp_path:
            try:
                os.unlink(self.temp_path)
            except OSError:
                pass
            self.temp_path = None


def receive(request: Any, choose_dir: Callable[[dict[str, str]], str],
            max_size: int) -> Upload:
    """Read the multipart body of ``request`` (a Flask request).

    Args:
        choose_dir: called with the fields received so far when the file part
            starts; returns the folder for the temporary file (the
            destination root, so the final rename is atomic).
        max_size: the largest accepted body, in bytes.
    Returns: the :class:`Upload`.
    Raises: ApiError 400 (not multipart, no file part, body cut off), 413
        (larger than ``max_size``), 507 (the disk is full).  The temporary file is removed on error.
    """
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError("Invalid upload: expected multipart/form-data", 400)
    length = request.content_length
    if length is not None and length > max_size:
        raise ApiError(f"Upload size ({length} bytes) exceeds the limit of {max_size} bytes",
                       413)
    try:
        parser = StreamingFormDataParser(headers={"Content-Type": ctype})
    except Exception:
        raise ApiError("Invalid multipart/form-data header", 400) from None
    values = {name: _Field() for name in FIELDS}
    for name, tgt in values.items():
        parser.register(name, tgt)

    def current() -> dict[str, str]:
        return {k: v.value.decode("utf-8", "replace") for k, v in values.items()
                if v.value or v._started}

    target = _FileTarget(lambda: choose_dir(current()))
    parser.register("file", target)
    stream = request.stream
    total = 0
    try:
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_size:
                raise ApiError(f"Upload size exceeds the limit of {max_size} bytes", 413)
            parser.data_received(chunk)
        if length is not None and total < length:
            raise ApiError("Upload incomplete: connection closed", 400)
        if not target.started:
            raise ApiError("No file was uploaded (form field 'file' missing)", 400)
        if not target.finished:
            raise ApiError("Upload incomplete: multipart body truncated", 400)
    except BaseException as err:
        target.close()
        if target.temp_path:
            try:
                os.unlink(target.temp_path)
            except OSError:
                pass
        if isinstance(err, ApiError):
            raise
        if isinstance(err, OSError) and is_disk_full(err):   # the temp file is gone
            raise disk_full_error("an upload") from None
        if isinstance(err, (ClientDisconnected, OSError, ValueError)):
            raise ApiError("Upload incomplete: connection closed", 400) from None
        if isinstance(err, Exception) and type(err).__module__.startswith("streaming_form_data"):
            raise ApiError(f"Invalid multipart body: {err}", 400) from None
        raise
    return Upload(target, current())
