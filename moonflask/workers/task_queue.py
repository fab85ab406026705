"""Task queues: one greenlet applies queued tasks in order, so that event
handlers running in Klippy's reader greenlet never wait on the database or
on a network service (history's job records, each notifier's sends)."""
from __future__ import annotations

import logging
from typing import Any, Callable

from ..api import disk_full_error, is_disk_full

log = logging.getLogger(__name__)


def run(queue: Any, name: str) -> None:
    """Apply ``(fn, args)`` items of the gevent ``queue`` in order, forever.
    A failing task is logged with ``name`` and does not stop the next one."""
    while True:
        fn, args = queue.get()
        try:
            fn(*args)
        except Exception as err:
            if is_disk_full(err):     # logged once, not once per task
                disk_full_error(f"{name} records")
                continue
            log.exception("%s: %s failed", name, getattr(fn, "__name__", fn))


def enqueuer(queue: Any, fn: Callable[..., Any]) -> Callable[..., None]:
    """A callback that queues ``fn(*args)`` instead of running it."""
    def enqueue(*args: Any) -> None:
        queue.put((fn, args))
    return enqueue
