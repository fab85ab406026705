"""Parser table for Cura / CuraEngine (including the Griffin header of
Ultimaker printers and the thumbnail a UFP upload leaves in ``.thumbs/``)."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from .common import NUM, Computed, Field, Getter, ParseContext, SlicerParser, _quoted_str
from .thumbnails import SMALL_THUMB, _image_size, _make_small_png, _thumb_entry, _write_file


# --- Cura -----------------------------------------------------------------

# CuraEngine run without the front end writes these placeholders into the
# header (INT32_MAX-ish bounds, a fixed 6666 s time, 0 m of filament).
_CURA_PLACEHOLDER_RE = re.compile(r";MIN[XYZ]:2\.14748e\+0?6|;MAX[XYZ]:-2\.14748e\+0?6")


def _cura_placeholder(ctx: ParseContext) -> bool:
    return bool(_CURA_PLACEHOLDER_RE.search(ctx.src.head))


def _cura_number(pattern: str, placeholder: Optional[str] = None) -> Getter:
    rx = re.compile(pattern)

    def get(ctx: ParseContext) -> Optional[float]:
        m = rx.search(ctx.src.head)
        if m is None:
            return None
        raw = m.group(1)
        # a number in scientific notation is an unfilled bound placeholder
        end = m.end(1)
        if ctx.src.head[end:end + 1] in ("e", "E"):
            return None
        if placeholder is not None and raw == placeholder and _cura_placeholder(ctx):
            return None
        return float(raw)
    return get


def _cura_filament_total(ctx: ParseContext) -> Optional[float]:
    m = ctx.search("head", r";Filament used: (.*)")
    if m is None:
        return None
    nums = re.findall(r"\d*\.?\d+", m.group(1))
    if not nums:
        return None
    total = sum(float(n) * 1000 for n in nums)
    if total == 0 and _cura_placeholder(ctx):
        return None
    return total


def _cura_fields() -> List[Any]:
    h = "head"
    return [
        Field("layer_count", h, r";LAYER_COUNT:(\d+)", int),
        Computed("object_height", _cura_number(r";MAXZ:" + NUM)),
        Computed("estimated_time", _cura_number(r";TIME:(\d*\.?\d+)", "6666")),
        Field("nozzle_diameter", h, r";Nozzle diameter = " + NUM),
        Field("layer_height", h, r";Layer height: " + NUM),
        Computed("first_layer_height", _cura_number(r";MINZ:" + NUM)),
        Field("first_layer_extr_temp", h, r"M109 S" + NUM),
        Field("first_layer_bed_temp", h, r"M190 S" + NUM),
        Field("chamber_temp", h, r"M191 S" + NUM),
        Field("filament_name", h, r";Filament name = (.*)", _quoted_str),
        Field("filament_type", h, r";Filament type = (.*)", _quoted_str),
        Computed("filament_total", _cura_filament_total),
    ]


# ---------------------------------------------------------------------------
# Slicers
# ---------------------------------------------------------------------------

class Cura(SlicerParser):
    """Cura / CuraEngine, including the Griffin (Ultimaker) header flavour."""

    name = "Cura"
    detect_re = re.compile(r"Cura_SteamEngine\s(.*)")
    fields = _cura_fields()
    object_markers = ("cura",)

    @classmethod
    def clean_version(cls, version: str) -> str:
        # Griffin header: ";GENERATOR.NAME:Cura_SteamEngine\n;GENERATOR.VERSION:X"
        m = re.match(r";GENERATOR\.VERSION:(.*)", version)
        return m.group(1).strip() if m else version

    def fallback_thumbnails(self, gcode_path: str) -> Optional[List[Dict[str, Any]]]:
        # a UFP upload leaves its thumbnail in .thumbs/<stem>.png
        thumb_dir = os.path.join(os.path.dirname(gcode_path), ".thumbs")
        stem = os.path.splitext(os.path.basename(gcode_path))[0]
        full = os.path.join(thumb_dir, stem + ".png")
        if not os.path.isfile(full):
            return None
        with open(full, "rb") as f:
            data = f.read()
        dims = _image_size(data)
        if dims is None:
            return None
        small_name = f"{stem}-{SMALL_THUMB[0]}x{SMALL_THUMB[1]}.png"
        small_path = os.path.join(thumb_dir, small_name)
        thumbs: List[Dict[str, Any]] = []
        small = _make_small_png(data, lanczos=True)
        if small is not None:
            _write_file(small_path, small[0])
            thumbs.append(_thumb_entry(small[1], small[2], small_path, small_name))
        thumbs.append(_thumb_entry(dims[0], dims[1], full, stem + ".png"))
        return thumbs
