"""Compare response shapes with the reference Moonraker 0.11.0 recordings in
tests/reference/ (keys and JSON types; values differ run to run)."""
from __future__ import annotations

import json
import os
from typing import Any

REF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")


def reference(name: str) -> dict:
    """The recorded fixture ``tests/reference/NAME.json``."""
    with open(os.path.join(REF_DIR, name + ".json")) as fh:
        return json.load(fh)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def shape_diff(ref: Any, ours: Any, path: str = "$", free: tuple[str, ...] = ()) -> list[str]:
    """Differences of keys and types between ``ref`` and ``ours``.

    ``free`` lists JSON paths whose dict keys are data (printer object names,
    gcode commands, sensor names): only the value types of keys present in
    both are compared there.  Lists compare their first elements.
    """
    out: list[str] = []
    if _kind(ref) != _kind(ours) and not (ref is None or ours is None):
        return [f"{path}: reference {_kind(ref)}, moonflask {_kind(ours)}"]
    if isinstance(ref, dict) and isinstance(ours, dict):
        if path not in free:
            missing = set(ref) - set(ours)
            extra = set(ours) - set(ref)
            if missing:
                out.append(f"{path}: missing keys {sorted(missing)}")
            if extra:
                out.append(f"{path}: extra keys {sorted(extra)}")
        for key in set(ref) & set(ours):
            out += shape_diff(ref[key], ours[key], f"{path}.{key}", free)
    elif isinstance(ref, list) and isinstance(ours, list) and ref and ours:
        out += shape_diff(ref[0], ours[0], f"{path}[0]", free)
    return out
