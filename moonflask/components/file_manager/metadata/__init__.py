"""G-code metadata extraction: one small parser table per slicer.

Implements what the spec's "Get GCode Metadata" section (web_api.md,
``GET /server/files/metadata``) returns for a file, with the same keys, value
types and values as Moonraker 0.11.0's metadata extractor (observed as a black
box), except for the documented deliberate differences
(see the README's compatibility notes).

Only a bounded head and tail of the file are read (``CHUNK_SIZE`` bytes from
each end), so the cost does not grow with the size of the print.

Public API:

* :func:`extract_metadata` -- the metadata dict for one file (writes thumbnails
  to ``.thumbs/`` beside it, optionally runs exclude-object processing first).
* :func:`process_objects` -- rewrite a file with ``EXCLUDE_OBJECT_*`` commands.
* :func:`unpack_ufp` -- unpack an Ultimaker Format Package (re-exported from
  :mod:`moonflask.components.file_manager.ufp`).
* ``python -m moonflask.components.file_manager.metadata -p ROOT -f FILE [--check-objects]
  [-u UFP]`` prints ``{"file": FILE, "metadata": {...}}`` as JSON.

Thumbnails are decoded and re-encoded with Pillow (a hard dependency), so
the QOI->PNG conversions and the generated 32x32 PNGs are byte-identical to
Moonraker's.  Pillow is imported on first use by the image helpers, not at
module import; everything else uses the standard library only.

Package layout: this module holds the public API, the file reader, slicer
detection/dispatch and the extraction entry point; :mod:`.common` the value
converters, field-table types and parser base class; :mod:`.prusaslicer`
(PrusaSlicer, its forks, Slic3r, Bambu Studio), :mod:`.cura` and
:mod:`.others` (Simplify3D, KISSlicer, IceSL, ideaMaker) the per-slicer
tables; :mod:`.thumbnails` the thumbnail decoding and :mod:`.objects` the
exclude-object processing.  ``__main__`` is the command line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import (
    NUM as NUM, Computed as Computed, Field as Field, Getter as Getter,
    ParseContext as ParseContext, SlicerParser, UnknownSlicer,
)
from .cura import Cura
from .objects import OBJECT_PROCESSOR, process_objects
from .others import IceSL, IdeaMaker, KISSlicer, Simplify3D
from .prusaslicer import (
    BambuStudio, OrcaSlicer as OrcaSlicer, PrusaSlicer, Slic3r, Slic3rPE,
    SuperSlicer as SuperSlicer,
)
from .thumbnails import SMALL_THUMB as SMALL_THUMB, _parse_thumbnails

__all__ = [
    "CHUNK_SIZE", "MetadataError", "extract_metadata", "process_objects",
    "unpack_ufp", "detect_slicer", "SLICERS", "main",
]

log = logging.getLogger("moonflask.metadata")

#: bytes read from the start and from the end of a file
CHUNK_SIZE = 1024 * 1024

# Keys in the order Moonraker emits them (dict order is kept in the JSON).
FIELD_ORDER = (
    "layer_count", "object_height", "estimated_time", "nozzle_diameter",
    "layer_height", "first_layer_height", "first_layer_extr_temp",
    "first_layer_bed_temp", "chamber_temp", "filament_name", "filament_type",
    "filament_colors", "filament_change_count", "extruder_colors",
    "filament_temps", "referenced_tools", "mmu_print", "filament_total",
    "filament_weight_total", "filament_weights", "printer_vendor",
    "printer_model", "printer_variant",
)


class MetadataError(Exception):
    """Raised for a file that cannot be read (missing, not a regular file)."""


# ---------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------

class GcodeSource:
    """The bounded parts of a G-code file that the parsers look at.

    Attributes: ``size`` (bytes), ``head_bytes``/``tail_bytes`` (at most
    ``CHUNK_SIZE`` bytes from each end; they overlap for files smaller than
    twice that), ``tail_offset`` (file offset of ``tail_bytes``), ``head`` and
    ``tail`` (the same, decoded as UTF-8 ignoring invalid bytes) and
    ``combined`` (head plus the part of the tail that does not overlap it,
    where thumbnails are searched).
    """

    def __init__(self, path: str, chunk: int = CHUNK_SIZE) -> None:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            self.size = f.tell()
            f.seek(0)
            self.head_bytes = f.read(chunk)
            self.tail_offset = max(0, self.size - chunk)
            if self.tail_offset == 0:
                self.tail_bytes = self.head_bytes if self.size <= chunk else b""
                extra = b""
            else:
                f.seek(self.tail_offset)
                self.tail_bytes = f.read(chunk)
                skip = max(0, len(self.head_bytes) - self.tail_offset)
                extra = self.tail_bytes[skip:]
        if self.size <= chunk:
            self.tail_bytes = self.head_bytes
        self.head = self.head_bytes.decode("utf-8", "ignore")
        self.tail = (self.head if self.tail_bytes is self.head_bytes
                     else self.tail_bytes.decode("utf-8", "ignore"))
        self.combined = self.head + (extra.decode("utf-8", "ignore") if extra else "")

    def text(self, region: str) -> str:
        return self.head if region == "head" else self.tail


_START_RE = re.compile(rb"\n[MG]\d+\s.*\n")
# the same pattern matched backwards, to find the last command line quickly
_END_RE_REV = re.compile(rb"\n.*\s\d+[MG]\n")


def _gcode_start_byte(src: GcodeSource) -> Optional[int]:
    m = _START_RE.search(src.head_bytes)
    return m.start() if m else None


def _gcode_end_byte(src: GcodeSource) -> Optional[int]:
    data = src.tail_bytes
    m = _END_RE_REV.search(data[::-1])
    if m is None:
        return None
    return src.tail_offset + len(data) - m.start()


# ---------------------------------------------------------------------------
# Slicers
# ---------------------------------------------------------------------------

#: detection order (first match wins), as in Moonraker
SLICERS: Tuple[type, ...] = (
    Slic3rPE, Slic3r, BambuStudio, PrusaSlicer, Cura, Simplify3D, KISSlicer,
    IceSL, IdeaMaker,
)


def detect_slicer(head: str) -> SlicerParser:
    """Return the parser for a file whose first ``CHUNK_SIZE`` bytes are
    ``head`` (decoded text); :class:`UnknownSlicer` when none matches."""
    for cls in SLICERS:
        parser = cls.detect(head)
        if parser is not None:
            return parser
    return UnknownSlicer()


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def extract_metadata(gcode_path: str, root_path: str, *,
                     check_objects: bool = False) -> Dict[str, Any]:
    """Extract the metadata of one G-code file (spec: "Get GCode Metadata").

    ``gcode_path`` is the file, absolute or relative to ``root_path`` (the
    ``gcodes`` root).  Returns a dict with ``size`` (bytes), ``modified``
    (mtime, float seconds), ``uuid`` (new uuid4 string), ``file_processors``
    (list of names), ``slicer``, ``slicer_version`` and, when found,
    ``gcode_start_byte``/``gcode_end_byte`` (byte offsets of the first and
    end of the last command line), the slicer fields in :data:`FIELD_ORDER`
    (mm, seconds, degrees C, grams as floats/ints as Moonraker types them) and
    ``thumbnails`` (list of ``{width, height, size, relative_path}``, paths
    relative to the file's folder).  ``job_id``/``print_start_time`` are added
    by the server, not here.  Thumbnails are written to ``.thumbs/`` beside
    the file.  With ``check_objects`` the file is first rewritten for
    ``exclude_object`` (see :func:`process_objects`).  Raises
    :class:`MetadataError` when the file does not exist or is not a file.
    """
    path = gcode_path if os.path.isabs(gcode_path) else os.path.join(root_path, gcode_path)
    if not os.path.isfile(path):
        raise MetadataError("File not found: %s" % gcode_path)
    src = GcodeSource(path)
    parser = detect_slicer(src.head)
    processors: List[str] = []
    if check_objects and parser.object_markers:
        if process_objects(path, parser.object_markers[0]):
            processors.append(OBJECT_PROCESSOR)
            src = GcodeSource(path)
    st = os.stat(path)
    meta: Dict[str, Any] = {
        "size": src.size,
        "modified": st.st_mtime,
        "uuid": str(uuid.uuid4()),
        "file_processors": processors,
        "slicer": parser.slicer,
        "slicer_version": parser.version,
    }
    start = _gcode_start_byte(src)
    end = _gcode_end_byte(src)
    if start is not None:
        meta["gcode_start_byte"] = start
    if end is not None:
        meta["gcode_end_byte"] = end
    values = parser.parse_fields(src)
    for key in FIELD_ORDER:
        if key in values:
            meta[key] = values[key]
    if parser.thumbnails:
        thumbs = _parse_thumbnails(src, path)
        if thumbs is None:
            thumbs = parser.fallback_thumbnails(path)
        if thumbs:
            meta["thumbnails"] = thumbs
    return meta


def unpack_ufp(ufp_path: str, dest_gcode_path: str) -> None:
    """Unpack an Ultimaker Format Package; see :func:`moonflask.components.file_manager.ufp.unpack_ufp`."""
    from ..ufp import unpack_ufp as _unpack
    _unpack(ufp_path, dest_gcode_path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``-p ROOT -f FILE [--check-objects] [-u UFP]``.

    Prints ``{"file": FILE, "metadata": {...}}`` on stdout and returns 0, or
    logs the error on stderr and returns 1.
    """
    ap = argparse.ArgumentParser(description="G-code metadata extraction")
    ap.add_argument("-p", "--path", default=os.getcwd(), help="gcodes root")
    ap.add_argument("-f", "--filename", required=True, help="file, relative to the root")
    ap.add_argument("-u", "--ufp", default=None, help="UFP archive to unpack to FILE first")
    ap.add_argument("-o", "--check-objects", action="store_true",
                    help="process the file for exclude_object")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    path = os.path.join(args.path, args.filename)
    try:
        if args.ufp:
            unpack_ufp(args.ufp, path)
        meta = extract_metadata(args.filename, args.path, check_objects=args.check_objects)
    except Exception as e:
        log.error("metadata extraction failed for %s: %s", args.filename, e)
        return 1
    sys.stdout.write(json.dumps({"file": args.filename, "metadata": meta}))
    sys.stdout.flush()
    return 0
