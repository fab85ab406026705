"""Shared pieces of the G-code metadata parsers.

The value converters that turn a matched slicer setting into a metadata value,
the field-table types (:class:`Field`, :class:`Computed` and the
:class:`ParseContext` they read from), the :class:`SlicerParser` base class
that every per-slicer module subclasses, and :class:`UnknownSlicer` (generic
G-code, for files whose header names no known slicer).  Standard library only.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from . import GcodeSource

NUM = r"(\d*\.?\d+)"          # a non-negative decimal number ("5", ".4", "0.25")


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
