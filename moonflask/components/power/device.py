"""The base of every ``[power NAME]`` device: the options common to all
types, the state machine, locking and the post-change actions.

Spec: configuration.md "[power]" / "Options common to all power devices",
"External Power Events"; web_api.md "Power APIs".

A device's ``state`` is ``init`` (not yet known), ``on``, ``off`` or
``error`` (the last request failed; the poll worker retries it).  Every
request to the hardware runs under the device's lock, so two clients never
interleave commands, and is bounded by ``REQUEST_TIMEOUT``.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import gevent.lock

from ...api import ApiError
from ...config import ConfigError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0   # seconds for one exchange with a device
RETRY_INTERVAL = 5.0    # seconds between retries of a device in error
MIN_POLL = 1.0          # seconds, the smallest poll_interval
ON, OFF, INIT, ERROR = "on", "off", "init", "error"


class DeviceError(Exception):
    """The device could not be reached or answered nonsense; the message
    says why (``Connection refused``, ``timed out after 5.0 s`` ...)."""


class PowerDevice:
    """One configured power device.

    Subclasses implement :meth:`query` (read the state from the hardware)
    and :meth:`command` (switch it), both returning True for on, and may
    override :meth:`start` (subscriptions, opening a line).

    Args:
        power: the :class:`moonflask.components.power.Power` component.
        section: the ``[power NAME]`` config section.
    Raises:
        ConfigError: an option is invalid.
    """

    type = ""
    polls = True          # poll_interval is accepted
    has_timer = False     # the timer option is accepted

    def __init__(self, power: Any, section: Any) -> None:
        self.power = power
        self.server = power.server
        self.name = section.name.split(None, 1)[1].strip()
        self.section = section
        self.state = INIT
        self.last_error: str | None = None
        self.lock = gevent.lock.Semaphore()
        self.locked_while_printing = section.getboolean("locked_while_printing", False)
        self.off_when_shutdown = section.getboolean("off_when_shutdown", False)
        self.off_when_shutdown_delay = 0.0
        if self.off_when_shutdown:
            self.off_when_shutdown_delay = section.getfloat("off_when_shutdown_delay", 0.0,
                                                            minval=0.0)
        self.restart_klipper_when_powered = section.getboolean(
            "restart_klipper_when_powered", False)
        self.restart_delay = 1.0
        if self.restart_klipper_when_powered:
            self.restart_delay = section.getfloat("restart_delay", 1.0, minval=0.0)
        self.bound_services = section.getlist("bound_services", [])
        self.on_when_job_queued = section.getboolean("on_when_job_queued", False)
        initial = section.get("initial_state", None)
        if initial is not None:
            initial = initial.lower()
            if initial not in (ON, OFF):
                raise ConfigError(f"[{section.name}]: initial_state must be 'on' or 'off', "
                                  f"not '{initial}'")
        self.initial_state = initial
        self.restrict_action_processing = section.getboolean("restrict_action_processing",
                                                             True)
        self.timer = section.getfloat("timer", None, minval=0.0) if self.has_timer else None
        self.poll_interval = None
        if self.polls:
            self.poll_interval = section.getfloat("poll_interval", None, minval=MIN_POLL)
        for svc in self.bound_services:
            if svc.lower().startswith("moonraker") or svc.lower().startswith("moonflask"):
                raise ConfigError(f"[{section.name}]: the Moonraker service can not be "
                                  "bound to a power device")
        self.initialized = False
        self.next_poll = 0.0
        self._timer_glet: gevent.Greenlet | None = None

    # -- what subclasses implement -------------------------------------------
    def query(self) -> bool:
        """Read the device: True when on.  Raises DeviceError."""
        raise NotImplementedError

    def command(self, on: bool) -> bool:
        """Switch the device on or off; returns the state it reports
        afterwards (True: on).  Raises DeviceError."""
        raise NotImplementedError

    def start(self) -> None:
        """Called once when the server starts (before initialisation)."""

    # -- info ----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """``{"device", "status", "locked_while_printing", "type"}`` (the
        ``machine.device_power.devices`` item and ``notify_power_changed``)."""
        return {"device": self.name, "status": self.state,
                "locked_while_printing": self.locked_while_printing, "type": self.type}

    # -- state ---------------------------------------------------------------
    def _set_state(self, state: str, external: bool = False) -> None:
        old = self.state
        self.state = state
        if state == old:
            return
        log.info("power device %s: %s -> %s%s", self.name, old, state,
                 " (external)" if external else "")
        if state != ERROR:
            # the reference sends no notify_power_changed for a device that
            # fails (tests/reference/power_mqtt_http_plug2_no_answer.json)
            self.power.notify_changed(self)
        if external and state in (ON, OFF) and old in (ON, OFF) \
                and not self.restrict_action_processing:
            self._run_actions(state)

    def _fail(self, err: Exception) -> None:
        self.last_error = str(err)
        log.warning("power device %s: %s", self.name, err)
        self._set_state(ERROR)
        self.next_poll = time.monotonic() + RETRY_INTERVAL

    def initialize(self) -> None:
        """Bring the device to its ``initial_state`` (or read its state);
        retried by the poll worker until it succeeds."""
        with self.lock:
            try:
                if self.initial_state is not None:
                    on = self.command(self.initial_state == ON)
                else:
                    on = self.query()
            except DeviceError as err:
                self._fail(err)
                return
            self.initialized = True
            self.last_error = None
            self._schedule_poll()
            self._set_state(ON if on else OFF)
        if self.initial_state is not None:
            self._sync_services(self.initial_state)

    def refresh(self) -> None:
        """Poll the device once; an external change is reported (and its
        actions run unless ``restrict_action_processing``)."""
        if not self.initialized:
            self.initialize()
            return
        with self.lock:
            try:
                on = self.query()
            except DeviceError as err:
                self._fail(err)
                return
            self.last_error = None
            self._schedule_poll()
            self._set_state(ON if on else OFF, external=True)

    def refresh_for_request(self) -> bool:
        """Called before a request reads or switches this device (``device``
        GET/POST, ``status``, ``on``/``off``).  A family whose state is
        always current overrides it (the reference re-reads an ``mqtt``
        device with ``query_after_command`` here, see tests/reference/
        power_mqtt_*.json).

        Returns: True when ``state`` is then known to be the device's real
        state, so that a request for that state sends no command (as the
        reference); False (here) always sends the command.
        """
        return False

    def _schedule_poll(self) -> None:
        self.next_poll = (time.monotonic() + self.poll_interval
                          if self.poll_interval else float("inf"))

    def due(self, now: float) -> bool:
        """True when the poll worker should refresh (or retry) this device."""
        return now >= self.next_poll

    def set_power(self, on: bool) -> str:
        """Switch the device; returns the new state (``on``/``off``).

        Raises: ApiError 400 (the reference's status) naming the device and
        the reason when the device cannot be switched (it is then in ``error``).
        """
        with self.lock:
            try:
                now_on = self.command(on)
            except DeviceError as err:
                self._fail(err)
                raise ApiError(f"Error Setting Device Status: {self.name} to "
                               f"{ON if on else OFF}: {err}", 400) from None
            self.initialized = True
            self.last_error = None
            self._schedule_poll()
            self._set_state(ON if now_on else OFF)
        self._run_actions(self.state)
        return self.state

    # -- actions -------------------------------------------------------------
    def _run_actions(self, state: str) -> None:
        if state == ON:
            if self.timer:
                self._start_timer()
            if self.restart_klipper_when_powered:
                self.power.schedule_firmware_restart(self)
        elif self._timer_glet is not None:
            self._timer_glet.kill(block=False)
            self._timer_glet = None
        self._sync_services(state)

    def _start_timer(self) -> None:
        if self._timer_glet is not None:
            self._timer_glet.kill(block=False)

        def expire() -> None:
            self._timer_glet = None
            try:
                self.set_power(False)
            except ApiError as err:
                log.warning("power device %s: timer: %s", self.name, err.message)
        self._timer_glet = gevent.spawn_later(self.timer, expire)

    def _sync_services(self, state: str) -> None:
        if not self.bound_services:
            return
        machine = self.server.lookup_component("machine", None)
        if machine is None:
            log.warning("power device %s: no machine component for bound services", self.name)
            return
        action = "start" if state == ON else "stop"
        for svc in self.bound_services:
            gevent.spawn(self._service_action, machine, action, svc)

    def _service_action(self, machine: Any, action: str, svc: str) -> None:
        try:
            machine.service_action(action, svc)
        except ApiError as err:
            log.warning("power device %s: %s %s failed: %s", self.name, action, svc,
                        err.message)

    def close(self) -> None:
        """Stop the timer (server shutdown)."""
        if self._timer_glet is not None:
            self._timer_glet.kill(block=False)
