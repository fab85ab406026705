"""JSON encoding for every transport (orjson: several times faster than the
standard library, which matters for status updates fanned out to many clients).

``dumps(obj) -> str`` and ``loads(bytes | str) -> Any``; ``loads`` raises
``ValueError`` on malformed input.  Non-string dict keys and non-JSON types
(sets, tuples, paths) are converted rather than rejected.
"""
from __future__ import annotations

from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


def dumps(obj: Any) -> str:
    """Encode ``obj`` as compact JSON text."""
    return orjson.dumps(obj, default=_default, option=_OPTS).decode()


def dumpb(obj: Any) -> bytes:
    """Encode ``obj`` as compact JSON bytes (UTF-8)."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


def loads(data: bytes | str) -> Any:
    """Decode JSON text; raises ValueError (orjson.JSONDecodeError) when malformed."""
    return orjson.loads(data)
