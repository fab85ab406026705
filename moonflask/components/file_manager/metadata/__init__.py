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
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "CHUNK_SIZE", "MetadataError", "extract_metadata", "process_objects",
    "unpack_ufp", "detect_slicer", "SLICERS", "main",
]

log = logging.getLogger("moonflask.metadata")

#: bytes read from the start and from the end of a file
CHUNK_SIZE = 1024 * 1024
#: name of the generated small thumbnail's size
SMALL_THUMB = (32, 32)
#: the exclude-object processor's name, as Moonraker reports it
OBJECT_PROCESSOR = "preprocess_cancellation"
_PROCESSED_BANNER = (
    "; Pre-Processed for Cancel-Object support by preprocess_cancellation v0.2.0"
)

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

NUM = r"(\d*\.?\d+)"          # a non-negative decimal number ("5", ".4", "0.25")


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
# Value converters
# ---------------------------------------------------------------------------

def _split_values(raw: str) -> List[str]:
    """Split a slicer list value on ``;`` and ``,`` outside double quotes,
    strip blanks and quotes, drop empty items."""
    items: List[str] = []
    cur: List[str] = []
    quoted = False
    for ch in raw:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch in ";," and not quoted:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    out = []
    for item in items:
        item = item.strip().strip('"').strip()
        if item:
            out.append(item)
    return out


def _one_or_json(raw: str) -> Optional[str]:
    vals = _split_values(raw)
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else json.dumps(vals)


def _str_list(raw: str) -> List[str]:
    return _split_values(raw)


def _int_list(raw: str) -> List[int]:
    return [int(v) for v in _split_values(raw)]


def _number_list(raw: str) -> Optional[List[float]]:
    vals = re.findall(r"\d*\.?\d+", raw)
    return [float(v) for v in vals] if vals else None


def _float_sum(raw: str) -> Optional[float]:
    vals = _split_values(raw)
    if not vals:
        return None
    return sum(float(v) for v in vals)


def _quoted_str(raw: str) -> str:
    return raw.strip('"')


def _duration(raw: str) -> Optional[int]:
    """``1d 2h 3m 4s`` -> seconds (int)."""
    total = 0
    found = False
    for unit, mult in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        m = re.search(r"(\d+)" + unit, raw)
        if m:
            total += int(m.group(1)) * mult
            found = True
    return total if found else None


# ---------------------------------------------------------------------------
# Field tables
# ---------------------------------------------------------------------------

Getter = Callable[["ParseContext"], Any]


class Field:
    """One metadata key read from a file.

    ``region`` is ``"head"`` or ``"tail"``; ``pattern`` a regex whose first
    group is the raw value; ``conv`` turns that string into the value (an
    exception or ``None`` means "absent"); ``mode`` is ``"first"`` (first
    match) or ``"max"`` (largest float over all matches); ``default`` is used
    when the pattern does not occur at all.
    """

    __slots__ = ("key", "region", "regex", "conv", "mode", "default")

    def __init__(self, key: str, region: str, pattern: str,
                 conv: Callable[[str], Any] = float, mode: str = "first",
                 default: Any = None) -> None:
        self.key = key
        self.region = region
        self.regex = re.compile(pattern)
        self.conv = conv
        self.mode = mode
        self.default = default

    def get(self, ctx: "ParseContext") -> Any:
        text = ctx.src.text(self.region)
        if self.mode == "max":
            vals = [float(v) for v in self.regex.findall(text)]
            return max(vals) if vals else None
        m = self.regex.search(text)
        if m is None:
            return list(self.default) if isinstance(self.default, list) else self.default
        try:
            return self.conv(m.group(1))
        except (ValueError, TypeError, IndexError):
            return None


class Computed:
    """A metadata key computed by a function of the parse context."""

    __slots__ = ("key", "func")

    def __init__(self, key: str, func: Getter) -> None:
        self.key = key
        self.func = func

    def get(self, ctx: "ParseContext") -> Any:
        try:
            return self.func(ctx)
        except (ValueError, TypeError, IndexError, ZeroDivisionError):
            return None


class ParseContext:
    """What a field getter sees: the file parts and the values found so far."""

    def __init__(self, src: GcodeSource) -> None:
        self.src = src
        self.values: Dict[str, Any] = {}

    def search(self, region: str, pattern: str) -> Optional["re.Match[str]"]:
        return re.search(pattern, self.src.text(region))


# --- PrusaSlicer family (PrusaSlicer, SuperSlicer, OrcaSlicer, QIDISlicer,
#     any "; generated by NAME VERSION on DATE at TIME" slicer) ------------

def _first_layer_height_pct(region: str) -> Getter:
    def get(ctx: ParseContext) -> Optional[float]:
        m = ctx.search(region, r"; first_layer_height = " + NUM + r"(%?)")
        if m is None:
            return None
        if m.group(2):
            lh = ctx.values.get("layer_height")
            if lh is None:
                return None
            return lh * float(m.group(1)) / 100
        return float(m.group(1))
    return get


def _prusa_fields(region: str = "tail", *, estimated_time: bool = True,
                  filament_total: bool = True, weight_total: bool = True
                  ) -> List[Any]:
    r = region
    fields: List[Any] = [
        Field("layer_count", r, r"; total layers count = (\d+)", int),
        Field("object_height", r, r"G1 Z" + NUM + r"\sF", mode="max"),
    ]
    if estimated_time:
        fields.append(Field("estimated_time", r,
                            r"; estimated printing time.*? = (.*)", _duration))
    fields += [
        Field("nozzle_diameter", r, r"; nozzle_diameter = " + NUM),
        Field("layer_height", r, r"; layer_height = " + NUM),
        Computed("first_layer_height", _first_layer_height_pct(r)),
        Field("first_layer_extr_temp", r, r"; first_layer_temperature = " + NUM),
        Field("first_layer_bed_temp", r, r"; first_layer_bed_temperature = " + NUM),
        Field("chamber_temp", r, r"; chamber_temperature = " + NUM),
        Field("filament_name", r, r"; filament_settings_id = (.*)", _one_or_json),
        Field("filament_type", r, r"; filament_type = (.*)", _one_or_json),
        Field("filament_colors", r, r"; filament_colour = (.*)", _str_list, default=[]),
        Field("filament_change_count", r, r"; total toolchanges = (\d+)", int),
        Field("extruder_colors", r, r"; extruder_colour = (.*)", _str_list, default=[]),
        Field("filament_temps", r, r"; (?:nozzle_)?temperature = (.*)", _int_list, default=[]),
        Field("referenced_tools", r, r"; referenced_tools = (.*)", _int_list, default=[]),
        Field("mmu_print", r, r"; single_extruder_multi_material = (\d+)", int),
    ]
    if filament_total:
        fields.append(Field("filament_total", r, r"; filament used \[mm\] = (.*)", _float_sum))
    if weight_total:
        fields.append(Field("filament_weight_total", r,
                            r"; total filament used \[g\] = " + NUM))
    fields += [
        # unanchored on purpose: a lone "; total filament used [g]" line counts
        Field("filament_weights", r, r"filament used \[g\] = (.*)", _number_list),
        Field("printer_vendor", "tail", r"; printer_vendor = (.*)", _quoted_str),
        Field("printer_model", "tail", r"; printer_model = (.*)", _quoted_str),
        Field("printer_variant", "tail", r"; printer_variant = (.*)", _quoted_str),
    ]
    return fields


# --- Bambu Studio: everything in the header/config block at the top -------

def _bambu_fields() -> List[Any]:
    h = "head"
    return [
        Field("layer_count", h, r"; total layer number: (\d+)", int),
        Field("object_height", h, r"; max_z_height: " + NUM),
        Field("estimated_time", h, r"; estimated printing time.*? = (.*)", _duration),
        Field("nozzle_diameter", h, r"; nozzle_diameter = " + NUM),
        Field("layer_height", h, r"; layer_height = " + NUM),
        Field("first_layer_height", h, r"; initial_layer_print_height = " + NUM),
        Field("first_layer_extr_temp", h, r"; nozzle_temperature_initial_layer = " + NUM),
        Field("first_layer_bed_temp", h, r"; hot_plate_temp_initial_layer = " + NUM),
        Field("chamber_temp", h, r"; chamber_temperatures = " + NUM),
        Field("filament_name", h, r"; filament_settings_id = (.*)", _one_or_json),
        Field("filament_type", h, r"; filament_type = (.*)", _one_or_json),
        Field("filament_colors", h, r"; filament_colour = (.*)", _str_list, default=[]),
        Field("filament_change_count", h, r"; total toolchanges = (\d+)", int),
        Field("extruder_colors", h, r"; extruder_colour = (.*)", _str_list, default=[]),
        Field("filament_temps", h, r"; (?:nozzle_)?temperature = (.*)", _int_list, default=[]),
        Field("referenced_tools", h, r"; referenced_tools = (.*)", _int_list, default=[]),
        Field("mmu_print", h, r"; single_extruder_multi_material = (\d+)", int),
        Field("filament_total", h, r"; total filament length \[mm\] : " + NUM),
        Field("filament_weight_total", h, r"; total filament weight \[g\] : " + NUM),
        Field("printer_vendor", "tail", r"; printer_vendor = (.*)", _quoted_str),
        Field("printer_model", "tail", r"; printer_model = (.*)", _quoted_str),
        Field("printer_variant", "tail", r"; printer_variant = (.*)", _quoted_str),
    ]


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


# --- Simplify3D -----------------------------------------------------------

def _s3d_temps(ctx: ParseContext, want: str) -> Optional[float]:
    names = ctx.search("head", r";   temperatureName,(.*)")
    temps = ctx.search("head", r";   temperatureSetpointTemperatures,(.*)")
    if names is None or temps is None:
        return None
    nlist = [n.strip() for n in names.group(1).split(",")]
    tlist = [t.strip() for t in temps.group(1).split(",")]
    if want not in nlist:
        return None
    return float(tlist[nlist.index(want)])


def _s3d_build_time(ctx: ParseContext) -> Optional[int]:
    m = ctx.search("tail", r";   Build time: (.*)")
    if m is None:
        return None
    raw = m.group(1)
    total = 0
    for pat, mult in ((r"(\d+) hours?", 3600), (r"(\d+) minutes?", 60),
                      (r"(\d+) sec", 1)):
        mm = re.search(pat, raw)
        if mm:
            total += int(mm.group(1)) * mult
    return total


def _s3d_fields() -> List[Any]:
    return [
        Field("object_height", "tail", r"G1 Z" + NUM, mode="max"),
        Computed("estimated_time", _s3d_build_time),
        Field("nozzle_diameter", "head", r";   extruderDiameter," + NUM),
        Field("layer_height", "head", r";   layerHeight," + NUM),
        Field("first_layer_height", "head", r"G1 Z" + NUM),
        Computed("first_layer_extr_temp", lambda c: _s3d_temps(c, "Extruder 1")),
        Computed("first_layer_bed_temp", lambda c: _s3d_temps(c, "Heated Bed")),
        Field("filament_name", "head", r";   printMaterial,(.*)", _quoted_str),
        Field("filament_total", "tail", r";   Filament length: " + NUM + r" mm"),
        Field("filament_weight_total", "tail", r";   Plastic weight: " + NUM + r" g"),
    ]


# --- KISSlicer ------------------------------------------------------------

def _kiss_filament_total(ctx: ParseContext) -> Optional[float]:
    vals = re.findall(r";\s*Ext #\d+ =\s*" + NUM + r" mm", ctx.src.tail)
    return sum(float(v) for v in vals) if vals else None


def _kiss_fields() -> List[Any]:
    return [
        Field("object_height", "tail", r"; END_LAYER_OBJECT z=" + NUM, mode="max"),
        Field("estimated_time", "tail",
              r"; Calculated-during-export Build Time: " + NUM + r" minutes",
              lambda v: float(v) * 60),
        Field("first_layer_height", "head", r"; first_layer_thickness_mm = " + NUM),
        Field("first_layer_extr_temp", "head", r"; first_layer_C = " + NUM),
        Field("first_layer_bed_temp", "head", r"; bed_C = " + NUM),
        Field("chamber_temp", "head", r"; chamber_C = " + NUM),
        Computed("filament_total", _kiss_filament_total),
    ]


# --- IceSL ----------------------------------------------------------------

def _icesl_fields() -> List[Any]:
    h = "head"
    return [
        Field("layer_count", h, r"; layer_count :\s*(\d+)", int),
        Field("object_height", h, r"; print_height_mm :\s*" + NUM),
        Field("estimated_time", h, r"; estimated_print_time_s :\s*" + NUM),
        Field("nozzle_diameter", h, r"; nozzle_diameter_mm_0 :\s*" + NUM),
        Field("layer_height", h, r"; z_layer_height_mm :\s*" + NUM),
        Field("first_layer_height", h, r"; z_layer_height_first_layer_mm :\s*" + NUM),
        Field("first_layer_extr_temp", h, r"; extruder_temp_degree_c_0 :\s*" + NUM),
        Field("first_layer_bed_temp", h, r"; bed_temp_degree_c :\s*" + NUM),
        Field("chamber_temp", h, r"; chamber_temp_degree_c :\s*" + NUM),
        Field("filament_type", h, r"; filament_type :\s*(.*)", _quoted_str),
        Field("filament_total", h, r"; filament_used_mm :\s*" + NUM),
    ]


# --- ideaMaker ------------------------------------------------------------

def _idea_weight(ctx: ParseContext) -> Optional[float]:
    """Grams of filament: per extruder, length (tail) x section x density
    (diameters and densities from the head); absent unless the three lists
    have the same length, 0 when there are none."""
    used = [float(v) for v in re.findall(r";Material#\d+ Used: " + NUM, ctx.src.tail)]
    dias = [float(v) for v in re.findall(r";Filament Diameter #\d+: " + NUM, ctx.src.head)]
    dens = [float(v) for v in re.findall(r";Filament Density #\d+: " + NUM, ctx.src.head)]
    if not len(used) == len(dias) == len(dens):
        return None
    if not used:
        return 0
    total = 0.0
    for length, dia, den in zip(used, dias, dens):
        area = math.pi * (dia / 2) ** 2                      # mm^2
        # mm x mm^2 = mm^3; mm^3 x g/cm^3 / 1000 = g  (Moonraker divides by 1e6)
        total += length * area * den / 1000
    return total


def _idea_filament_total(ctx: ParseContext) -> Optional[float]:
    vals = re.findall(r";Material#\d+ Used: " + NUM, ctx.src.tail)
    return sum(float(v) for v in vals) if vals else None


def _idea_bbox_height(ctx: ParseContext) -> Optional[float]:
    m = ctx.search("head", r";Bounding Box:((?: \d*\.?\d+){6})")
    return float(m.group(1).split()[5]) if m else None


def _idea_fields() -> List[Any]:
    return [
        Computed("object_height", _idea_bbox_height),
        Field("estimated_time", "tail", r";Print Time: " + NUM),
        Field("layer_height", "head", r";LAYER:1\s*;HEIGHT:" + NUM),
        Field("first_layer_height", "head", r";LAYER:0\s*;HEIGHT:" + NUM),
        Field("first_layer_extr_temp", "head", r"M109 T0 S" + NUM),
        Field("first_layer_bed_temp", "head", r"M190 S" + NUM),
        Field("chamber_temp", "head", r"M191 S" + NUM),
        Field("filament_name", "head", r";Filament name = (.*)", _quoted_str),
        Field("filament_type", "head", r";Filament type = (.*)", _quoted_str),
        Computed("filament_total", _idea_filament_total),
        Computed("filament_weight_total", _idea_weight),
    ]


# ---------------------------------------------------------------------------
# Slicers
# ---------------------------------------------------------------------------

class SlicerParser:
    """Base of all slicer parsers: a name, a detection regex and a field table.

    Subclasses only set class attributes: ``name`` (the ``slicer`` value),
    ``detect_re`` (searched in the first ``CHUNK_SIZE`` bytes; its groups give
    the version, or name and version when ``name_group`` is set), ``fields``
    (a sequence of :class:`Field`/:class:`Computed`), ``list_defaults`` and
    ``thumbnails`` (whether embedded thumbnails are decoded).
    """

    name = "Unknown"
    detect_re: Optional["re.Pattern[str]"] = None
    name_group = False
    thumbnails = True
    fields: Sequence[Any] = ()
    object_markers: Optional[Tuple[str, ...]] = None   # for process_objects

    def __init__(self, slicer: str = "Unknown", version: str = "?") -> None:
        self.slicer = slicer
        self.version = version

    @classmethod
    def detect(cls, head: str) -> Optional["SlicerParser"]:
        """Return a parser instance when ``head`` was written by this slicer."""
        if cls.detect_re is None:
            return None
        m = cls.detect_re.search(head)
        if m is None:
            return None
        if cls.name_group:
            return cls(m.group(1), m.group(2))
        return cls(cls.name, cls.clean_version(m.group(1)))

    @classmethod
    def clean_version(cls, version: str) -> str:
        return version

    def parse_fields(self, src: GcodeSource) -> Dict[str, Any]:
        ctx = ParseContext(src)
        for f in self.fields:
            val = f.get(ctx)
            if val is not None:
                ctx.values[f.key] = val
        return ctx.values

    def fallback_thumbnails(self, gcode_path: str) -> Optional[List[Dict[str, Any]]]:
        """Thumbnails from elsewhere when the file embeds none (Cura/UFP)."""
        return None


class UnknownSlicer(SlicerParser):
    """Any file whose header names no known slicer: generic G-code only."""

    fields = (
        Field("object_height", "tail", r"G1 Z" + NUM, mode="max"),
        Field("first_layer_height", "head", r"G1 Z" + NUM),
        Field("first_layer_extr_temp", "head", r"M109 S" + NUM),
        Field("first_layer_bed_temp", "head", r"M190 S" + NUM),
        Field("chamber_temp", "head", r"M191 S" + NUM),
    )


class PrusaSlicer(SlicerParser):
    """PrusaSlicer and its forks: SuperSlicer, OrcaSlicer, QIDISlicer and any
    slicer writing ``; generated by NAME VERSION on DATE at TIME``."""

    name = "PrusaSlicer"
    detect_re = re.compile(
        r"; generated by (.*) (.*) on \d{4}-\d{2}-\d{2} at \d{2}:\d{2}:\d{2}")
    name_group = True
    fallback_re = re.compile(r"(PrusaSlicer|SuperSlicer|OrcaSlicer|QIDISlicer)\s(.*)\son")
    fields = _prusa_fields()
    object_markers = ("prusa",)

    @classmethod
    def detect(cls, head: str) -> Optional[SlicerParser]:
        m = PrusaSlicer.detect_re.search(head)
        if m is None:
            m = PrusaSlicer.fallback_re.search(head)
        elif m.group(1) == "BambuStudio":
            return None
        if m is None:
            return None
        klass = _PRUSA_FORKS.get(m.group(1), PrusaSlicer)
        return klass(m.group(1), m.group(2))


class Slic3rPE(PrusaSlicer):
    """Slic3r Prusa Edition (PrusaSlicer's predecessor)."""

    name = "Slic3r PE"
    detect_re = re.compile(r"Slic3r Prusa Edition\s(.*)\son")
    name_group = False
    fields = _prusa_fields(filament_total=False)

    @classmethod
    def detect(cls, head: str) -> Optional[SlicerParser]:
        return SlicerParser.detect.__func__(cls, head)  # type: ignore[attr-defined]


class Slic3r(Slic3rPE):
    """The original Slic3r (1.x): no time estimate, filament totals or thumbnails."""

    name = "Slic3r"
    detect_re = re.compile(r"Slic3r\s(\d.*)\son")
    thumbnails = False
    fields = _prusa_fields(estimated_time=False, filament_total=False,
                           weight_total=False)


class SuperSlicer(PrusaSlicer):
    """SuperSlicer: detected through :class:`PrusaSlicer` (same table)."""

    name = "SuperSlicer"


class OrcaSlicer(PrusaSlicer):
    """OrcaSlicer: detected through :class:`PrusaSlicer` (same table)."""

    name = "OrcaSlicer"


_PRUSA_FORKS = {"SuperSlicer": SuperSlicer, "OrcaSlicer": OrcaSlicer}


class BambuStudio(SlicerParser):
    """Bambu Studio (``; BambuStudio VERSION`` in its header block)."""

    name = "BambuStudio"
    detect_re = re.compile(r"; BambuStudio[^ ]* (.+)")
    fields = _bambu_fields()


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


class Simplify3D(SlicerParser):
    """Simplify3D 4.x."""

    name = "Simplify3D"
    detect_re = re.compile(r"Simplify3D\(R\)\sVersion\s(.*)")
    fields = _s3d_fields()


class KISSlicer(SlicerParser):
    """KISSlicer (``; KISSlicer - ...`` then ``; version X``)."""

    name = "KISSlicer"
    detect_re = re.compile(r"; KISSlicer[\s\S]*?; version\s(.*)")
    fields = _kiss_fields()

    @classmethod
    def clean_version(cls, version: str) -> str:
        return version.replace(" ", "-")


class IceSL(SlicerParser):
    """IceSL (``<IceSL VERSION>`` in its header)."""

    name = "IceSL"
    detect_re = re.compile(r"<IceSL\s(.*)>")
    fields = _icesl_fields()


class IdeaMaker(SlicerParser):
    """Raise3D ideaMaker (``;Sliced by ideaMaker VERSION, DATE``)."""

    name = "IdeaMaker"
    detect_re = re.compile(r"\sideaMaker\s(.*),")
    fields = _idea_fields()


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
# Thumbnails
# ---------------------------------------------------------------------------

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
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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


def _make_small_png(data: bytes, *, lanczos: bool) -> Optional[Tuple[bytes, int, int]]:
    """``data`` (an image) shrunk with Pillow's ``Image.thumbnail`` to fit
    :data:`SMALL_THUMB` and saved as PNG -> (png bytes, width, height), or
    None when the image cannot be read.  ``lanczos`` selects the LANCZOS
    filter (the UFP path) instead of Pillow's default, as Moonraker does."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            if lanczos:
                im.thumbnail(SMALL_THUMB, Image.Resampling.LANCZOS)
            else:
                im.thumbnail(SMALL_THUMB)
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


# ---------------------------------------------------------------------------
# Exclude-object processing
# ---------------------------------------------------------------------------

_MOVE_RE = re.compile(r"^G[01](?=[\s;]|$)")
_AXIS_RE = re.compile(r"([XYE])\s*(-?\d*\.?\d+)")


def _object_name(raw: str) -> str:
    return re.sub(r"\W+", "_", raw.strip())


def _marker_events(line: str, style: str, current: Optional[str]
                   ) -> Tuple[Optional[str], bool]:
    """Return (name of an object that starts on this line or None,
    whether the current object ends on this line)."""
    s = line.strip()
    if style == "prusa":
        if s.startswith("; printing object "):
            return _object_name(s[len("; printing object "):]), False
        if s.startswith("; stop printing object "):
            return None, current is not None
        return None, False
    # cura
    if s.startswith(";MESH:"):
        name = s[len(";MESH:"):]
        ends = current is not None
        if name == "NONMESH":
            return None, ends
        return _object_name(name), ends
    return None, False


def _fmt(v: float) -> str:
    return json.dumps(round(v, 3))


def process_objects(gcode_path: str, style: str) -> bool:
    """Rewrite ``gcode_path`` for Klipper's ``exclude_object`` module.

    ``style`` is ``"prusa"`` (``; printing object NAME`` / ``; stop printing
    object NAME`` labels: PrusaSlicer, SuperSlicer, OrcaSlicer, Bambu) or
    ``"cura"`` (``;MESH:NAME`` labels).  Each labelled object gets an
    ``EXCLUDE_OBJECT_DEFINE NAME= CENTER=x,y POLYGON=[...]`` line (centre =
    mean of its extruding moves' end points, polygon = their bounding box, in
    mm) before the first command of the file, and ``EXCLUDE_OBJECT_START`` /
    ``EXCLUDE_OBJECT_END`` after the labels.  The file is replaced atomically.
    Returns False, leaving the file untouched, when it has no labelled object
    or already defines objects.  Reads the whole file twice (streaming).
    """
    stats: Dict[str, List[float]] = {}
    order: List[str] = []
    current: Optional[str] = None
    x = y = None
    last_elapsed = -1          # Cura: the final ";TIME_ELAPSED:" closes the last object
    with open(gcode_path, "r", encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f):
            if line.startswith("EXCLUDE_OBJECT_DEFINE") or line.startswith(_PROCESSED_BANNER):
                return False
            if line[:1] == ";":
                if line.startswith(";TIME_ELAPSED:"):
                    last_elapsed = lineno
                start, ends = _marker_events(line, style, current)
                if ends:
                    current = None
                if start is not None:
                    current = start
                    if start not in stats:
                        stats[start] = [0.0, 0.0, 0, math.inf, math.inf, -math.inf, -math.inf]
                        order.append(start)
                continue
            code = line.split(";", 1)[0].strip()
            if not code:
                continue
            if _MOVE_RE.match(code):
                ext = False
                moved = False
                for axis, val in _AXIS_RE.findall(code[2:]):
                    v = float(val)
                    if axis == "X":
                        x = v
                        moved = True
                    elif axis == "Y":
                        y = v
                        moved = True
                    else:
                        # like preprocess_cancellation: any positive E counts,
                        # whatever the extrusion mode
                        ext = v > 0
                if current is not None and ext and moved and x is not None and y is not None:
                    st = stats[current]
                    st[0] += x
                    st[1] += y
                    st[2] += 1
                    st[3] = min(st[3], x)
                    st[4] = min(st[4], y)
                    st[5] = max(st[5], x)
                    st[6] = max(st[6], y)
    if not order:
        return False
    header = ["", "", _PROCESSED_BANNER, "; %d known objects" % len(order)]
    for name in order:
        sx, sy, n, x0, y0, x1, y1 = stats[name]
        if n:
            poly = "[[%s,%s],[%s,%s],[%s,%s],[%s,%s]]" % (
                _fmt(x0), _fmt(y0), _fmt(x0), _fmt(y1), _fmt(x1), _fmt(y1),
                _fmt(x1), _fmt(y0))
            header.append("EXCLUDE_OBJECT_DEFINE NAME=%s CENTER=%.3f,%.3f POLYGON=%s"
                          % (name, sx / n, sy / n, poly))
        else:
            header.append("EXCLUDE_OBJECT_DEFINE NAME=%s" % name)
    dirname = os.path.dirname(os.path.abspath(gcode_path))
    fd, tmp = tempfile.mkstemp(prefix=".objproc-", dir=dirname)
    try:
        with open(gcode_path, "r", encoding="utf-8", errors="surrogateescape",
                  newline="") as src, \
                os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape",
                          newline="") as dst:
            inserted = False
            current = None
            for lineno, line in enumerate(src):
                s = line.strip()
                if not inserted and s and not s.startswith(";"):
                    dst.write("\n".join(header) + "\n")
                    inserted = True
                dst.write(line)
                if s.startswith(";"):
                    start, ends = _marker_events(line, style, current)
                    if ends:
                        dst.write("EXCLUDE_OBJECT_END NAME=%s\n" % current)
                        current = None
                    if start is not None:
                        dst.write("EXCLUDE_OBJECT_START NAME=%s\n" % start)
                        current = start
                    if style == "cura" and lineno == last_elapsed and current is not None:
                        dst.write("EXCLUDE_OBJECT_END NAME=%s\n" % current)
                        current = None
            if not inserted:
                dst.write("\n".join(header) + "\n")
            dst.flush()
            os.fsync(dst.fileno())
        st = os.stat(gcode_path)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, gcode_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


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
    from .ufp import unpack_ufp as _unpack
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
