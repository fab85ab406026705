"""Power devices from ``[power NAME]`` sections (Moonraker's ``power``
component).  Spec: configuration.md "[power]"; web_api.md "Power APIs",
"notify_power_changed"; the ``set_device_power`` Klippy remote method
("Toggling device state from Klipper").

The component holds the device registry (in configuration order) and what
spans devices: the lock while printing, ``off_when_shutdown``,
``on_when_job_queued``, ``restart_klipper_when_powered`` and the
``notify_power_changed`` notification.  Each device family lives in its own
module (``klipper``, ``http_devices``, ``tplink``, ``uhubctl``, ``mqtt``,
``gpio``);
the poll worker (``moonflask/workers/power.py``) initialises devices that
could not be reached at startup, polls those with ``poll_interval`` and
retries those in ``error``.
"""
from __future__ import annotations

import logging
from typing import Any

import gevent

from ...api import ApiError
from ...config import ConfigError
from .device import ON, OFF, PowerDevice

log = logging.getLogger(__name__)

ACTIONS = ("on", "off", "toggle")
NOT_FOUND = "device_not_found"


def _device_types() -> dict[str, type]:
    from . import gpio, http_devices, klipper, mqtt, tplink, uhubctl
    types: dict[str, type] = {"klipper_device": klipper.KlipperDevice,
                              "tplink_smartplug": tplink.TPLinkSmartPlug,
                              "uhubctl": uhubctl.Uhubctl, "mqtt": mqtt.MqttDevice,
                              "gpio": gpio.GpioDevice, "rf": gpio.RFDevice}
    types.update(http_devices.TYPES)
    return types


class Power:
    """The power component.

    Args:
        server: the :class:`moonflask.app.Server`.
    Raises:
        ConfigError: a ``[power NAME]`` section is invalid (unknown type,
            missing option).
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.devices: dict[str, PowerDevice] = {}
        types = _device_types()
        for name in server.config.prefix_sections("power "):
            section = server.config.section(name)
            kind = section.get("type")
            cls = types.get(kind)
            if cls is None:
                raise ConfigError(f"[{name}]: unsupported power device type '{kind}'")
            dev = cls(self, section)
            self.devices[dev.name] = dev
        self._pending_restart: set[str] = set()
        self._restart_glet: gevent.Greenlet | None = None
        ev = server.events
        ev.on("server:started", self._on_started)
        ev.on("server:shutdown", self._on_shutdown)
        ev.on("klippy:shutdown", self._on_klippy_shutdown)
        ev.on("klippy:ready", self._on_klippy_ready)
        ev.on("klippy:identified", self._on_klippy_identified)
        ev.add_notify_hook(self._on_notification)
        server.klippy.register_remote_method("set_device_power", self._remote_set_power)
        self.worker = None

    # -- lifetime ------------------------------------------------------------
    def _on_started(self) -> None:
        from ...workers.power import run
        for dev in self.devices.values():
            dev.start()
        self.worker = self.server.workers.start("power", run, self)

    def _on_shutdown(self) -> None:
        for dev in self.devices.values():
            dev.close()

    # -- lookups -------------------------------------------------------------
    def get_device(self, name: str) -> PowerDevice:
        """The device ``name``.  Raises ApiError 400 ``No valid device named NAME``."""
        dev = self.devices.get(name)
        if dev is None:
            raise ApiError(f"No valid device named {name}", 400)
        return dev

    def device_list(self) -> list[dict[str, Any]]:
        """Every device's info, in configuration order."""
        return [dev.info() for dev in self.devices.values()]

    def status(self, names: list[str]) -> dict[str, str]:
        """``{name: state}`` for ``names``; an unknown one is ``device_not_found``.
        Raises ApiError 400 ``No arguments provided`` for an empty list."""
        if not names:
            raise ApiError("No arguments provided", 400)
        for n in names:
            if n in self.devices:
                self.devices[n].refresh_for_request()
        return {n: self.devices[n].state if n in self.devices else NOT_FOUND for n in names}

    # -- changes -------------------------------------------------------------
    def is_printing(self) -> bool:
        """True while Klippy prints (or is paused in) a job."""
        job_state = self.server.lookup_component("job_state", None)
        return bool(job_state is not None and job_state.is_printing())

    def request_action(self, name: str, action: str, force: bool = False) -> str:
        """Apply ``action`` (``on``, ``off``, ``toggle``) to device ``name``.

        Args:
            force: change a ``locked_while_printing`` device even while printing
                (the ``set_device_power`` remote method's ``force``).
        Returns: the new state.
        Raises:
            ApiError 400 for an unknown device or action, 400 for a locked
            device while printing, 500 when the device cannot be switched.
        """
        dev = self.get_device(name)
        action = action.lower() if isinstance(action, str) else action
        if action not in ACTIONS:
            raise ApiError(f"Invalid requested action '{action}'", 400)
        if not force:
            self._check_lock(dev)
        fresh = dev.refresh_for_request()
        if action == "toggle":
            on = dev.state != ON
        else:
            on = action == ON
        if fresh and dev.state == (ON if on else OFF):
            return dev.state            # already there: no command (as the reference)
        return dev.set_power(on)

    def _check_lock(self, dev: PowerDevice) -> None:
        if dev.locked_while_printing and self.is_printing():
            raise ApiError(f"Unable to change power for {dev.name} while printing", 400)

    def batch(self, names: list[str], action: str) -> dict[str, str]:
        """``machine.device_power.on|off``: switch every named device at once
        (in parallel); an unknown one is ``device_not_found``, one that
        fails keeps and reports its state.

        Raises: ApiError 400 ``No arguments provided``; 400 when one of them
        is locked while printing (then none is switched).
        """
        if not names:
            raise ApiError("No arguments provided", 400)
        for name in names:
            if name in self.devices:
                self._check_lock(self.devices[name])

        def one(name: str) -> str:
            if name not in self.devices:
                return NOT_FOUND
            try:
                return self.request_action(name, action)
            except ApiError as err:
                log.info("power %s %s: %s", action, name, err.message)
                return self.devices[name].state
        glets = {n: gevent.spawn(one, n) for n in names}
        gevent.joinall(list(glets.values()))
        return {n: g.value for n, g in glets.items()}

    def notify_changed(self, dev: PowerDevice) -> None:
        """Send ``notify_power_changed`` with the device's info."""
        self.server.events.notify("notify_power_changed", [dev.info()])

    def _remote_set_power(self, device: str = "", state: str = "", force: bool = False,
                          **_kw: Any) -> None:
        try:
            self.request_action(device, str(state), bool(force))
        except ApiError as err:
            log.warning("set_device_power %s %s: %s", device, state, err.message)
            self._respond(f"!! set_device_power: {err.message}")

    def _respond(self, text: str) -> None:
        try:
            msg = text.replace('"', "'")
            self.server.klippy.request("gcode/script",
                                       {"script": f'RESPOND TYPE=error MSG="{msg}"'})
        except ApiError:
            pass

    # -- events --------------------------------------------------------------
    def _on_klippy_shutdown(self) -> None:
        for dev in self.devices.values():
            if dev.off_when_shutdown:
                gevent.spawn_later(dev.off_when_shutdown_delay, self._shutdown_off, dev)

    def _shutdown_off(self, dev: PowerDevice) -> None:
        if self.server.klippy.state != "shutdown" or dev.state == OFF:
            return
        try:
            dev.set_power(False)
        except ApiError as err:
            log.warning("off_when_shutdown %s: %s", dev.name, err.message)

    def _on_notification(self, method: str, params: Any) -> None:
        if method != "notify_job_queue_changed" or not params:
            return
        if params[0].get("action") != "jobs_added":
            return
        for dev in self.devices.values():
            if dev.on_when_job_queued and dev.state != ON:
                gevent.spawn(self._job_queued_on, dev)

    def _job_queued_on(self, dev: PowerDevice) -> None:
        try:
            dev.set_power(True)
        except ApiError as err:
            log.warning("on_when_job_queued %s: %s", dev.name, err.message)

    # -- restart_klipper_when_powered ----------------------------------------
    def schedule_firmware_restart(self, dev: PowerDevice) -> None:
        """After ``restart_delay`` send FIRMWARE_RESTART unless Klippy is
        ready; postponed until Klippy reconnects when it is disconnected."""
        gevent.spawn_later(dev.restart_delay, self._firmware_restart, dev.name)

    def _firmware_restart(self, name: str) -> None:
        klippy = self.server.klippy
        if klippy.state == "ready":
            log.info("power %s: Klippy ready, FIRMWARE_RESTART not needed", name)
            return
        if not klippy.connected or klippy.state in ("disconnected", "startup"):
            log.info("power %s: FIRMWARE_RESTART postponed until Klippy connects", name)
            self._pending_restart.add(name)
            return
        log.info("power %s: sending FIRMWARE_RESTART", name)
        try:
            klippy.request("gcode/firmware_restart", timeout=10.0)
        except ApiError as err:
            log.warning("power %s: FIRMWARE_RESTART failed: %s", name, err.message)

    def _on_klippy_identified(self) -> None:
        if self._pending_restart:
            names, self._pending_restart = self._pending_restart, set()
            gevent.spawn(self._firmware_restart, sorted(names)[0])

    def _on_klippy_ready(self) -> None:
        self._pending_restart.clear()


def load_component(server: Any, _section: Any) -> Power:
    """Create the power component from every ``[power NAME]`` section."""
    return Power(server)


