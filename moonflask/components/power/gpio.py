"""``type: gpio`` and ``type: rf``: a relay or an RF transmitter on a host
GPIO line (libgpiod).  Spec: configuration.md "GPIO Device Configuration",
"RF Device Configuration", "External Power Events" (moonflask keeps
exclusive control of the line: the state is what it last drove).
"""
from __future__ import annotations

import re
import time
from typing import Any

import gevent
import gevent.monkey

from ...config import ConfigError
from ..gpio import OutputLine, parse_pin
from .device import DeviceError, PowerDevice

RF_PULSE = 0.00035   # seconds, the unit pulse of the RF code (~350 us)
RF_BITS = {"1": (3, 1), "0": (1, 3)}   # (high, low) in unit pulses (rc-switch protocol 1)
RF_SYNC = (1, 31)    # after each code: frames it for the receiver
RF_REPEATS = 10      # the code is sent this many times (receivers want several)


def rf_waveform(code: str) -> list[int]:
    """The unit-pulse durations of sending ``code`` (a binary string):
    alternately high and low, starting high; RF_REPEATS times the code's
    bits followed by the sync."""
    frame = [units for bit in code for units in RF_BITS[bit]] + list(RF_SYNC)
    return frame * RF_REPEATS


def _transmit(line: OutputLine, waveform: list[int]) -> None:
    """Drive ``line`` through ``waveform`` (see rf_waveform); runs in a
    native thread (gevent's threadpool) so that the 350 us pulses are not
    stretched to the hub's ~1 ms timer granularity: pulses of up to 2 ms
    (every bit) are spun, a longer one (the sync's low) sleeps with the
    unpatched sleep, releasing the GIL, until 1 ms before its edge.  Each
    pulse is timed from its own edge, so a thread preempted by the OS
    stretches one pulse (one frame of the repeats) rather than squeezing
    the ones after it.  Leaves the line low.  Raises OSError from the kernel."""
    sleep = gevent.monkey.get_original("time", "sleep")
    level = True
    try:
        for units in waveform:
            line.set(level)
            deadline = time.perf_counter() + units * RF_PULSE
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                if left > 0.002:            # only the sync's low sleeps
                    sleep(left - 0.001)
            level = not level
    finally:
        line.set(False)


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
    ``1011``), ``timer``.  A code is sent as rc-switch's protocol 1 (what
    433 MHz outlets decode): a 1 is 3 units high + 1 low, a 0 is 1 high + 3
    low, each code followed by a sync (1 high + 31 low) and sent RF_REPEATS
    times (rf_waveform).  RF receivers report nothing back, so the state is
    the last code sent."""

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
            gevent.get_hub().threadpool.apply(_transmit, (self.line, rf_waveform(self.codes[on])))
        except OSError as err:
            raise DeviceError(f"gpio {self.pin.chip}/{self.pin.offset}: "
                              f"{err.strerror or err}") from None
        self.state_on = on
        return on
