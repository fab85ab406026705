"""A button's loop: wait for edge events on its GPIO line and hand each to
the button (one at a time, as the spec requires).  Spec: configuration.md
"[button]"."""
from __future__ import annotations

import time
from typing import Any

from gevent.socket import wait_read


def run(button: Any) -> None:
    """Never returns: read ``button.line``'s edges and call
    ``button.handle_edge(pressed, monotonic_time)`` for each."""
    while True:
        wait_read(button.line.fileno())
        for pressed, _stamp in button.line.read_events():
            button.handle_edge(pressed, time.monotonic())
