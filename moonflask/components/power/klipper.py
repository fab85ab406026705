"""``type: klipper_device``: a Klipper ``output_pin`` or ``gcode_macro``
switched through Klippy.  Spec: configuration.md "Klipper Device
Configuration", "Gcode Macro Restrictions".

The object stays in moonflask's Klippy subscription; its ``value``
(output_pin) or ``value`` variable (gcode_macro) is the state, so a change
made from Klipper's side (``SET_PIN`` in a macro) is reported at once.
Switching sends ``SET_PIN PIN=NAME VALUE=1|0`` or ``MACRO VALUE=1|0``.
"""
from __future__ import annotations

from typing import Any

from ...api import ApiError
from ...config import ConfigError
from .device import INIT, ON, OFF, DeviceError, PowerDevice

GCODE_TIMEOUT = 10.0   # seconds for the SET_PIN / macro request


class KlipperDevice(PowerDevice):
    """A Klipper object used as a switch.

    Config: ``object_name`` (``output_pin NAME`` or ``gcode_macro NAME``,
    case sensitive), ``timer``.  ``off_when_shutdown`` and
    ``restart_klipper_when_powered`` are refused; ``bound_services`` may not
    name ``klipper`` or ``klipper_mcu``.
    """

    type = "klipper_device"
    polls = False
    has_timer = True

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        if self.off_when_shutdown or self.restart_klipper_when_powered:
            raise ConfigError(f"[{section.name}]: options 'off_when_shutdown' and "
                              "'restart_klipper_when_powered' are not available for "
                              "klipper_device")
        for svc in self.bound_services:
            if svc.lower().startswith("klipper"):
                raise ConfigError(f"[{section.name}]: klipper_device may not be bound "
                                  f"to the service '{svc}'")
        self.object_name = section.get("object_name")
        kind, _, target = self.object_name.partition(" ")
        if kind not in ("output_pin", "gcode_macro") or not target.strip():
            raise ConfigError(f"[{section.name}]: object_name must be 'output_pin NAME' or "
                              f"'gcode_macro NAME', not '{self.object_name}'")
        self.kind = kind
        self.target = target.strip()
        self.is_shutdown = False
        self.next_poll = float("inf")   # Klippy pushes its state; nothing to poll

    def info(self) -> dict[str, Any]:
        """The common info plus ``is_shutdown`` (Klippy is shut down)."""
        out = super().info()
        out["is_shutdown"] = self.is_shutdown
        return out

    def start(self) -> None:
        """Subscribe to the object and follow Klippy's state."""
        ev = self.server.events
        self.server.klippy.add_internal_subscription(f"power:{self.name}", {self.object_name})
        ev.on("klippy:status_update", self._on_status)
        ev.on("klippy:ready", self._on_ready)
        ev.on("klippy:shutdown", self._on_shutdown)
        ev.on("klippy:disconnected", self._on_disconnected)

    # -- Klippy's side -------------------------------------------------------
    def _value(self) -> Any:
        return (self.server.klippy.status.get(self.object_name) or {}).get("value")

    def _on_status(self, status: dict, _eventtime: float) -> None:
        if self.object_name not in status or self.server.klippy.state != "ready":
            return
        value = self._value()
        if value is None:
            return
        self.initialized = True
        self._set_state(ON if value > 0 else OFF, external=True)

    def _on_ready(self) -> None:
        self.is_shutdown = False
        value = self._value()
        if value is None:
            self._set_state(INIT)
            return
        first = not self.initialized
        self.initialized = True
        if first and self.initial_state is not None:
            try:
                self.set_power(self.initial_state == ON)
                return
            except ApiError:
                pass
        self._set_state(ON if value > 0 else OFF)

    def _on_shutdown(self) -> None:
        self.is_shutdown = True
        self.power.notify_changed(self)

    def _on_disconnected(self) -> None:
        self.is_shutdown = False
        self._set_state(INIT)

    # -- PowerDevice -----------------------------------------------------------
    def initialize(self) -> None:
        """Nothing to do before Klippy is ready (``_on_ready`` reads the state)."""

    def refresh(self) -> None:
        """Klippy pushes changes: nothing to poll."""

    def due(self, now: float) -> bool:
        """Never: Klippy pushes changes."""
        return False

    def query(self) -> bool:
        """The state from Klippy's status cache."""
        value = self._value()
        if value is None:
            raise DeviceError(f"{self.object_name} is not available from Klippy")
        return value > 0

    def command(self, on: bool) -> bool:
        """Send SET_PIN (output_pin) or the macro with VALUE=1|0.
        Raises DeviceError when Klippy is not ready or rejects the gcode."""
        klippy = self.server.klippy
        if klippy.state != "ready":
            raise DeviceError(f"Klippy is {klippy.state}")
        value = 1 if on else 0
        if self.kind == "output_pin":
            script = f"SET_PIN PIN={self.target} VALUE={value}"
        else:
            script = f"{self.target} VALUE={value}"
        try:
            klippy.request("gcode/script", {"script": script}, timeout=GCODE_TIMEOUT)
        except ApiError as err:
            raise DeviceError(err.message) from None
        return on
