"""``type: gpio`` and ``type: rf``: a relay or an RF transmitter on a host
GPIO line (libgpiod).  Spec: configuration.md "GPIO Device Configuration",
"RF Device Configuration", "External Power Events" (moonflask keeps
exclusive control of the line: the state is what it last drove).
"""
from __future__ import annotations

import re
from typing import Any

import gevent

from ...config import ConfigError
from ..gpio import OutputLine, parse_pin
from .device import DeviceError, PowerDevice

RF_PULSE = 0.00035   # seconds, the unit pulse of the RF code (~350 us)


class GpioDevice(PowerDevice):
    """Config: ``pin`` (required), ``timer`` (float seconds)."""

    type = "gpio"
    polls = False
    has_timer = True
    holds_state = True   # the line's level is the device's state (rf: False, idles low)

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        where = f"[{section.name}]"
        self.pin = parse_pin(section.get("pin"), where)
        self.line = OutputLine(self.pin, f"moonflask:{self.name}", where,
                               initial=self.holds_state and self.initial_state == "on")

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        return self.line.value

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        try:
            self.line.set(on)
        except OSError as err:
            raise DeviceError(f"gpio {self.pin.chip}/{self.pin.offset}: "
                              f"{err.strerror or err}") from None
        return on

    def due(self, now: float) -> bool:
        """Only until initialised: the line's state is moonflask's own."""
        return not self.initialized

    def close(self) -> None:
        """Release the device (server shutdown)."""
        super().close()
        self.line.close()


class RFDevice(GpioDevice):
    """Config: ``pin``, ``on_code``, ``off_code`` (binary strings such as
    ``1011``), ``timer``.  A code is sent as one pulse train: a 1 is 3 units
    high + 1 low, a 0 is 1 high + 3 low.  RF receivers report nothing back,
    so the state is the last code sent."""

    type = "rf"
    holds_state = False

    def __init__(self, power: Any, section: Any) -> None:
        # the codes are checked before the line is requested (a bad code
        # leaves no line held); the line idles low until a code is sent
        self.codes = {True: section.get("on_code"), False: section.get("off_code")}
        for code in self.codes.values():
            if not re.fullmatch(r"[01]+", code):
                raise ConfigError(f"[{section.name}]: RF codes must be binary, not '{code}'")
        super().__init__(power, section)
        self.state_on = self.initial_state == "on"

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        return self.state_on

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        try:
            for bit in self.codes[on]:
                high, low = (3, 1) if bit == "1" else (1, 3)
                self.line.set(True)
                gevent.sleep(high * RF_PULSE)
                self.line.set(False)
                gevent.sleep(low * RF_PULSE)
        except OSError as err:
            raise DeviceError(f"gpio {self.pin.chip}/{self.pin.offset}: "
                              f"{err.strerror or err}") from None
        self.state_on = on
        return on
