"""Ultimaker Format Package (.ufp) unpacking, as Moonraker does for uploads.

A UFP is a zip (OPC) archive holding the G-code at ``/3D/model.gcode`` and a
PNG preview at ``/Metadata/thumbnail.png``.  Moonraker keeps only those two:
the G-code becomes the uploaded file and the preview becomes the file's
thumbnail in ``.thumbs/`` (which the Cura parser then lists, together with a
generated 32x32 copy).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile

__all__ = ["UFP_MODEL_PATH", "UFP_THUMB_PATH", "unpack_ufp"]

UFP_MODEL_PATH = "/3D/model.gcode"
UFP_THUMB_PATH = "/Metadata/thumbnail.png"


def _member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    # Ultimaker writes member names with a leading slash; accept both forms
    for cand in (name, name.lstrip("/")):
        try:
            return zf.getinfo(cand)
        except KeyError:
            continue
    raise KeyError("There is no item named %r in the archive" % name)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: str) -> None:
    dirname = os.path.dirname(os.path.abspath(dest))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ufp-", dir=dirname)
    try:
        with zf.open(info) as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def unpack_ufp(ufp_path: str, dest_gcode_path: str) -> None:
    """Extract a UFP's G-code to ``dest_gcode_path`` and its thumbnail to
    ``.thumbs/<stem>.png`` beside it, then delete the UFP (as Moonraker does).

    Writes are atomic (temp file + rename), members are streamed.  Raises
    ``zipfile.BadZipFile`` for a file that is not a zip and ``KeyError`` when
    the archive has no ``/3D/model.gcode``; in both cases nothing is written
    and the UFP is left in place.  A missing thumbnail is not an error.
    """
    with zipfile.ZipFile(ufp_path) as zf:
        model = _member(zf, UFP_MODEL_PATH)
        try:
            thumb = _member(zf, UFP_THUMB_PATH)
        except KeyError:
            thumb = None
        _copy_member(zf, model, dest_gcode_path)
        if thumb is not None:
            stem = os.path.splitext(os.path.basename(dest_gcode_path))[0]
            thumb_dir = os.path.join(os.path.dirname(os.path.abspath(dest_gcode_path)),
                                     ".thumbs")
            _copy_member(zf, thumb, os.path.join(thumb_dir, stem + ".png"))
    try:
        os.remove(ufp_path)
    except OSError:
        pass
