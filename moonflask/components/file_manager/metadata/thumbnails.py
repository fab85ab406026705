"""Embedded G-code thumbnails: decoded from the file's comment blocks, written
to ``.thumbs/`` beside it, plus the generated 32x32 PNG.

Images are decoded and re-encoded with Pillow (a hard dependency), so the
QOI->PNG conversions and the generated small PNGs are byte-identical to
Moonraker's.  Pillow is imported on first use by the image helpers, not at
module import.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from . import GcodeSource

log = logging.getLogger("moonflask.metadata")

#: name of the generated small thumbnail's size
SMALL_THUMB = (32, 32)


_THUMB_RE = re.compile(
    r"thumbnail(_JPG|_QOI|) begin[;/+_ \t]*(\d+)[xX \t](\d+)[;/+_ \t]+(\d+)[^\n]*\n"
    r"(.*?)thumbnail\1 end", re.S)


def _thumb_entry(width: int, height: int, path: str, name: str) -> Dict[str, Any]:
    return {
        "width": width, "height": height, "size": os.path.getsize(path),
        "relative_path": ".thumbs/" + name,
    }


def _write_file(path: str, data: bytes) -> None:
    tmp = path + ".tmp%d" % os.getpid()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:   # a full disk: no partial file is left behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _parse_thumbnails(src: GcodeSource, gcode_path: str) -> Optional[List[Dict[str, Any]]]:
    blocks = []
    for m in _THUMB_RE.finditer(src.combined):
        kind, w, h, declared, body = m.groups()
        data = "".join(line.replace("; ", "") for line in body.splitlines())
        if len(data) != int(declared):
            log.info("MetadataError: Thumbnail Size Mismatch: detected %s, actual %d",
                     declared, len(data))
            continue
        try:
            raw = base64.b64decode(data)
        except Exception:
            continue
        blocks.append((kind or "", int(w), int(h), raw))
    if not blocks:
        return None
    thumb_dir = os.path.join(os.path.dirname(gcode_path), ".thumbs")
    os.makedirs(thumb_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(gcode_path))[0]
    thumbs: List[Dict[str, Any]] = []
    biggest: Optional[bytes] = None
    have_small = False
    for kind, w, h, raw in blocks:
        ext = "jpg" if kind == "_JPG" else "png"
        if kind == "_QOI":
            png = _qoi_to_png(raw)
            if png is None:
                continue
            raw = png
        name = f"{stem}-{w}x{h}.{ext}"
        path = os.path.join(thumb_dir, name)
        _write_file(path, raw)
        thumbs.append(_thumb_entry(w, h, path, name))
        if (w, h) == SMALL_THUMB:
            have_small = True
        if biggest is None or len(raw) > len(biggest):
            biggest = raw
    if not have_small and biggest is not None:
        small = _make_small_png(biggest, lanczos=False)
        if small is not None:
            name = f"{stem}-{SMALL_THUMB[0]}x{SMALL_THUMB[1]}.png"
            path = os.path.join(thumb_dir, name)
            _write_file(path, small[0])
            thumbs.insert(0, _thumb_entry(small[1], small[2], path, name))
    return thumbs


# --- image helpers (Pillow, imported on first use so that a process that
#     never extracts metadata does not load it) ------------------------------

def _image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) in pixels of an image Pillow can open (PNG, JPEG,
    QOI, ...), or None when it cannot.  Only the header is parsed."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


#: modes that Pillow resamples premultiplied (see :func:`_make_small_png`)
_ALPHA_MODES = ("RGBA", "LA")


def _make_small_png(data: bytes, *, lanczos: bool) -> Optional[Tuple[bytes, int, int]]:
    """``data`` (an image) shrunk with Pillow's ``Image.thumbnail`` to fit
    :data:`SMALL_THUMB` (aspect ratio kept: 32x18 from 220x124) and saved as
    PNG -> (png bytes, width, height), or None when the image cannot be
    read.  ``lanczos`` selects the LANCZOS filter (the UFP path) instead of
    Pillow's default (bicubic), as Moonraker does.

    An image with an alpha channel (mode RGBA or LA: PrusaSlicer's and
    Cura's renders) is resampled in one pass, without Pillow's reducing
    pre-step: that is what Pillow up to 12.x does for such images (Pillow 13
    added the pre-step), so the pixels, and the PNG bytes, are the ones
    Moonraker 0.11.0 writes with the Pillow 12 it installs, whichever Pillow
    moonflask runs with."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            gap: Optional[float] = None if im.mode in _ALPHA_MODES else 2.0
            if lanczos:
                im.thumbnail(SMALL_THUMB, Image.Resampling.LANCZOS, reducing_gap=gap)
            else:
                im.thumbnail(SMALL_THUMB, reducing_gap=gap)
            out = io.BytesIO()
            im.save(out, "PNG")
            return out.getvalue(), im.width, im.height
    except Exception as e:
        log.info("%s", e)
        return None


def _qoi_to_png(data: bytes) -> Optional[bytes]:
    """A QOI image re-encoded as PNG by Pillow, or None when it cannot be read."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            out = io.BytesIO()
            im.save(out, "PNG")
            return out.getvalue()
    except Exception:
        return None
