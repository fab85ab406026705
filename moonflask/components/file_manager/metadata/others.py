"""Parser tables for the remaining slicer families: Simplify3D, KISSlicer,
IceSL and Raise3D ideaMaker."""
from __future__ import annotations

import math
import re
from typing import Any, List, Optional

from .common import NUM, Computed, Field, ParseContext, SlicerParser, _quoted_str


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
