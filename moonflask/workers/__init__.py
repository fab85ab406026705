"""Long-lived greenlets.  :func:`supervised` runs a loop forever, restarting
it with backoff when it raises, and logs every failure (nothing dies
silently).  DESIGN.md "Concurrency"."""
from __future__ import annotations

import logging
from typing import Any, Callable

import gevent

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5   # seconds
BACKOFF_MAX = 30.0


def supervised(name: str, loop: Callable[..., Any], *args: Any) -> gevent.Greenlet:
    """Spawn ``loop(*args)`` in a greenlet that is restarted after an error
    (0.5 s doubling up to 30 s) or after it returns unexpectedly.

    Returns: the supervising greenlet (kill it to stop the worker).
    """
    def runner() -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                loop(*args)
                log.warning("worker %s returned; restarting", name)
            except gevent.GreenletExit:
                raise
            except Exception:
                log.exception("worker %s failed; restarting in %.1f s", name, delay)
            gevent.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
    return gevent.spawn(runner)
