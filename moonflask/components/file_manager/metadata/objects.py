"""Exclude-object processing: rewriting a G-code file for Klipper's
``exclude_object`` module, as Moonraker's ``preprocess_cancellation`` does."""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from typing import Dict, List, Optional, Tuple

#: the exclude-object processor's name, as Moonraker reports it
OBJECT_PROCESSOR = "preprocess_cancellation"
_PROCESSED_BANNER = (
    "; Pre-Processed for Cancel-Object support by preprocess_cancellation v0.2.0"
)



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
