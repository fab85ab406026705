"""``type: uhubctl``: USB port power through the ``uhubctl`` program.
Spec: configuration.md "USB (uhubctl) devices".

``uhubctl -l LOCATION [-p PORT]`` prints the hub's status; with ``-a on|off``
it switches and prints the new status.  The port lines look like
``  Port 2: 0100 power`` (powered) or ``  Port 2: 0000 off``; the last
status block of the hub at LOCATION is the state.

The command runs through (gevent's cooperative) ``subprocess``: the ``sh``
library deadlocks the gevent hub (its reader threads are greenlets under
monkey-patching; observed: the whole server stopped answering).
"""
from __future__ import annotations

import re
import subprocess
from typing import Any

from .device import REQUEST_TIMEOUT, DeviceError, PowerDevice

_HUB_RE = re.compile(r"^(?:Current|New) status for hub (\S+)")
_PORT_RE = re.compile(r"^\s+Port (\d+): [0-9a-fA-F]{4}\s*(.*)$")


def parse_status(text: str, location: str, port: int | None) -> bool:
    """Whether ``port`` (every port when None: any) of hub ``location`` is
    powered, from uhubctl's output.  Raises DeviceError when it is absent."""
    ports: dict[int, bool] = {}
    hub = None
    for line in text.splitlines():
        m = _HUB_RE.match(line)
        if m:
            hub = m.group(1)
            if hub == location:
                ports = {}
            continue
        m = _PORT_RE.match(line)
        if m and hub == location:
            flags = m.group(2).split()
            ports[int(m.group(1))] = "power" in flags
    if not ports:
        raise DeviceError(f"uhubctl reports no hub at location {location}")
    if port is None:
        return any(ports.values())
    if port not in ports:
        raise DeviceError(f"uhubctl reports no port {port} on hub {location}")
    return ports[port]


class Uhubctl(PowerDevice):
    """Config: ``location`` (required, ``-l``), ``port`` (``-p``), ``poll_interval``."""

    type = "uhubctl"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.location = section.get("location")
        self.port = section.getint("port", None)

    def _run(self, action: str | None) -> bool:
        args = ["-l", self.location]
        if self.port is not None:
            args += ["-p", str(self.port)]
        if action is not None:
            args += ["-a", action]
        try:
            proc = subprocess.run(["uhubctl", *args], capture_output=True,
                                  timeout=REQUEST_TIMEOUT, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise DeviceError("uhubctl is not installed") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"uhubctl timed out after {REQUEST_TIMEOUT:g} s") from None
        out = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0:
            msg = (proc.stderr.decode("utf-8", "replace") or out).strip()
            raise DeviceError(f"uhubctl failed ({proc.returncode}): {msg[:200]}")
        return parse_status(out, self.location, self.port)

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        return self._run(None)

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        return self._run("on" if on else "off")
