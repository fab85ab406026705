"""The Klippy connection: connect to Klippy's API socket, serve it until it
closes, reconnect forever with backoff (0.25 s doubling to 2 s while the
socket is absent or refuses).  DESIGN.md "Klippy"."""
from __future__ import annotations

from typing import Any

import gevent

RECONNECT_MIN = 0.25    # seconds
RECONNECT_MAX = 2.0


def run(klippy: Any) -> None:
    """Keep ``klippy`` (a :class:`moonflask.components.klippy_apis.Klippy`)
    connected.  Never returns; an error inside a session closes it cleanly
    (``on_disconnect``) before the supervisor restarts this loop."""
    delay = RECONNECT_MIN
    while True:
        sock = klippy.connect()
        if sock is None:
            gevent.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            continue
        delay = RECONNECT_MIN
        try:
            klippy.serve(sock)
        except Exception:   # not GreenletExit: a stopped server announces nothing
            klippy.on_disconnect()
            raise
        klippy.on_disconnect()
