"""The PanelDue serial loop: open the port, read newline-terminated lines
and hand each to the component, in order.  A port that cannot be opened or
fails raises, and the Supervisor reopens it with backoff.  Spec:
configuration.md "[paneldue]"."""
from __future__ import annotations

from typing import Any

from gevent.socket import wait_read

LINE_LIMIT = 4096   # bytes; a longer line without a newline is dropped


def run(panel: Any) -> None:
    """Never returns normally: read ``panel``'s serial port forever."""
    ser = panel.open()
    buf = b""
    try:
        while True:
            wait_read(ser.fileno())
            data = ser.read(4096)
            if not data:
                continue
            buf += data
            *lines, buf = buf.split(b"\n")
            if len(buf) > LINE_LIMIT:
                buf = b""
            for line in lines:
                panel.handle_line(line.decode("ascii", "replace"))
    finally:
        panel.close()
