"""GPIO lines through libgpiod's character devices (Moonraker's ``gpio``
component), used by ``[power]`` gpio/rf devices and ``[button]``.
Spec: configuration.md "GPIO Device Configuration", "[button]" (pin syntax).

A pin is ``[^|~][!][gpiochipN/]gpioM``: ``^`` pull-up, ``~`` pull-down,
``!`` inverted (active low); the chip defaults to ``gpiochip0``.  The
python ``gpiod`` bindings (libgpiod 2.x) are imported on first use; without
them, or without the chip, a pin fails with a ConfigError that says so.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError

_PIN_RE = re.compile(r"^([\^~])?(!)?(?:(gpiochip\d+)/)?gpio(\d+)$")


@dataclass
class PinSpec:
    """A parsed pin: ``chip`` (``gpiochip0``), ``offset``, ``inverted``,
    ``bias`` (``pull_up``, ``pull_down`` or None)."""

    chip: str
    offset: int
    inverted: bool
    bias: str | None


def parse_pin(text: str, where: str, allow_bias: bool = False) -> PinSpec:
    """Parse a pin option.  Raises ConfigError naming ``where`` when invalid."""
    m = _PIN_RE.match(text.strip())
    if m is None or (m.group(1) and not allow_bias):
        raise ConfigError(f"{where}: invalid gpio pin '{text}'")
    bias = {"^": "pull_up", "~": "pull_down"}.get(m.group(1) or "")
    return PinSpec(m.group(3) or "gpiochip0", int(m.group(4)), bool(m.group(2)), bias)


def _gpiod(where: str) -> Any:
    try:
        import gpiod
    except ImportError:
        raise ConfigError(f"{where}: the python gpiod (libgpiod) bindings are not "
                          "installed") from None
    return gpiod


def _chip_path(pin: PinSpec, where: str) -> str:
    path = os.path.join("/dev", pin.chip)
    if not os.path.exists(path):
        raise ConfigError(f"{where}: no gpio chip {path}")
    return path


class OutputLine:
    """A requested output line; ``set(True)`` drives it active (high unless
    inverted).  Raises ConfigError when the line cannot be requested."""

    def __init__(self, pin: PinSpec, consumer: str, where: str, initial: bool = False) -> None:
        path = _chip_path(pin, where)
        gpiod = _gpiod(where)
        from gpiod.line import Direction, Value
        self._value = Value
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, active_low=pin.inverted,
                                      output_value=Value.ACTIVE if initial else Value.INACTIVE)
        try:
            self._req = gpiod.request_lines(path, consumer=consumer,
                                            config={pin.offset: settings})
        except OSError as err:
            raise ConfigError(f"{where}: cannot request gpio line {pin.chip}/{pin.offset}: "
                              f"{err.strerror or err}") from None
        self.offset = pin.offset
        self.value = initial

    def set(self, on: bool) -> None:
        """Drive the line; raises OSError from the kernel."""
        self._req.set_value(self.offset, self._value.ACTIVE if on else self._value.INACTIVE)
        self.value = on

    def close(self) -> None:
        """Release the line."""
        self._req.release()


class InputLine:
    """A requested input line with edge events (both edges) and the kernel's
    debounce of ``debounce`` seconds.  ``fileno()`` is readable when events
    are pending; ``read_events()`` returns ``[(pressed, timestamp_s)]``."""

    def __init__(self, pin: PinSpec, consumer: str, where: str, debounce: float) -> None:
        path = _chip_path(pin, where)
        gpiod = _gpiod(where)
        from gpiod.line import Bias, Direction, Edge, Value
        self._active = Value.ACTIVE
        bias = {"pull_up": Bias.PULL_UP, "pull_down": Bias.PULL_DOWN}.get(
            pin.bias or "", Bias.AS_IS)
        settings = gpiod.LineSettings(direction=Direction.INPUT, edge_detection=Edge.BOTH,
                                      bias=bias, active_low=pin.inverted,
                                      debounce_period=datetime.timedelta(seconds=debounce))
        try:
            self._req = gpiod.request_lines(path, consumer=consumer,
                                            config={pin.offset: settings})
        except OSError as err:
            raise ConfigError(f"{where}: cannot request gpio line {pin.chip}/{pin.offset}: "
                              f"{err.strerror or err}") from None
        self.offset = pin.offset

    def fileno(self) -> int:
        """The request's file descriptor (for gevent's wait_read)."""
        return self._req.fd

    def value(self) -> bool:
        """True while the line is active (pressed)."""
        return self._req.get_value(self.offset) == self._active

    def read_events(self) -> list[tuple[bool, float]]:
        """Pending edge events as ``(active, kernel timestamp in seconds)``."""
        from gpiod.edge_event import EdgeEvent
        out = []
        for ev in self._req.read_edge_events():
            out.append((ev.event_type == EdgeEvent.Type.RISING_EDGE, ev.timestamp_ns / 1e9))
        return out

    def close(self) -> None:
        """Release the line."""
        self._req.release()
