"""The metadata worker: hands queued extraction requests, one at a time by
priority, to the metadata process (which it starts on demand and lets go
after ``WORKER_IDLE_EXIT`` seconds without work)."""
from __future__ import annotations

from typing import Any


def run(scanner: Any) -> None:
    """Serve ``scanner`` (a :class:`moonflask.components.file_manager.scanner.MetadataScanner`)
    forever."""
    while True:
        scanner.serve_next()
