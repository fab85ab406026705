"""The ``machine`` component: host information, system services, power
actions, sudo and peripherals.

``[machine]`` options: ``provider`` (systemd_dbus | systemd_cli |
supervisord_cli | none, default systemd_dbus), ``shutdown_action``
(poweroff | halt), ``sudo_password`` (kept in memory only),
``supervisord_config_path``, and ``validate_service`` / ``validate_config`` /
``force_validation`` (accepted; moonflask never rewrites unit files or the
configuration).

Allowed services: the names in ``DATA_PATH/moonraker.asvc`` (one per line)
plus DEFAULT_ALLOWED_SERVICES; units whose name starts with an allowed name
(``crowsnest``, ``klipper-2``) are managed, and so are Klipper's and
moonflask's own services (``instance_ids``).
Spec: web_api.md "Machine Requests", "Service State Changed", "Sudo alert event".
"""
from __future__ import annotations

import logging
import os
from typing import Any

import gevent
import gevent.event
import gevent.lock

from ...api import ApiError
from ...config import ConfigError
from . import peripherals, sysinfo
from .providers import (BaseProvider, SupervisordCliProvider, SystemdCliProvider,
                        SystemdDbusProvider, _cgroup_unit)
from .sudo import SudoManager

log = logging.getLogger(__name__)


PROVIDERS = ("systemd_dbus", "systemd_cli", "supervisord_cli", "none")
DEFAULT_ALLOWED_SERVICES = (
    "klipper_mcu", "webcamd", "MoonCord", "KlipperScreen", "moonraker-telegram-bot",
    "moonraker-obico", "sonar", "crowsnest", "octoeverywhere", "ratos-configurator",
)
INSTANCE_PREFIXES = ("klipper", "moonraker")
SERVICE_ACTIONS = ("start", "stop", "restart")


class Machine:
    """Host facts, the service provider, sudo and peripherals.

    Args:
        server: the :class:`moonflask.app.Server`.
        section: the ``[machine]`` ConfigSection, or None (defaults).
    Raises:
        ConfigError: unknown ``provider`` or ``shutdown_action``.
    """

    def __init__(self, server: Any, section: Any) -> None:
        self.server = server
        get = (lambda opt, default: section.get(opt, default)) if section is not None \
            else (lambda opt, default: default)
        provider = (get("provider", "systemd_dbus") or "none").strip().lower()
        if provider not in PROVIDERS:
            raise ConfigError(f"[machine]: option 'provider' must be one of "
                              f"{', '.join(PROVIDERS)}, not '{provider}'")
        self.shutdown_action = (get("shutdown_action", "poweroff") or "poweroff").lower()
        if self.shutdown_action not in ("poweroff", "halt"):
            raise ConfigError("[machine]: option 'shutdown_action' must be 'poweroff' "
                              f"or 'halt', not '{self.shutdown_action}'")
        if section is not None:
            for opt in ("validate_service", "validate_config", "force_validation"):
                section.getboolean(opt, opt != "force_validation")
        self.sudo = SudoManager(server, get("sudo_password", None))
        self.allowed_services = self._load_allowed()
        own = os.environ.get("SUPERVISOR_PROCESS_NAME") or _cgroup_unit("self")
        self.instance_ids = {"moonraker": own or "moonraker", "klipper": "klipper"}
        self.service_state: dict[str, dict[str, str]] = {}
        if provider == "systemd_dbus":
            self.provider: BaseProvider = SystemdDbusProvider(self)
        elif provider == "systemd_cli":
            self.provider = SystemdCliProvider(self)
        elif provider == "supervisord_cli":
            self.provider = SupervisordCliProvider(self, get("supervisord_config_path", None))
        else:
            self.provider = BaseProvider(self)
        self._static: dict[str, Any] | None = None
        self._initialized = gevent.event.Event()
        self._can_lock = gevent.lock.Semaphore()
        self._init_greenlet: gevent.Greenlet | None = None
        server.events.on("server:started", self._start)
        server.events.on("server:shutdown", self._stop)
        server.events.on("klippy:identified", self._on_klippy_identified)

    # -- setup --------------------------------------------------------------
    def _load_allowed(self) -> list[str]:
        names = list(DEFAULT_ALLOWED_SERVICES)
        path = os.path.join(self.server.data_path, "moonraker.asvc")
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    name = line.split("#", 1)[0].strip()
                    if name and name not in names:
                        names.append(name)
        except OSError:
            pass
        return names

    def is_allowed_unit(self, name: str) -> bool:
        """True when unit ``name`` (without ``.service``) is managed here."""
        low = name.lower()
        return any(low.startswith(p.lower()) for p in
                   (*self.allowed_services, *INSTANCE_PREFIXES))

    def add_warning(self, message: str) -> None:
        """Report ``message`` in ``server.info`` warnings."""
        warnings = self.server.config.runtime_warnings
        if message not in warnings:
            warnings.append(message)

    def _start(self) -> None:
        def init() -> None:
            try:
                self._static_info()
                self.provider.initialize()
                self._on_klippy_identified()
            except Exception:
                log.exception("machine initialisation failed")
            finally:
                self._initialized.set()
        self._init_greenlet = gevent.spawn(init)

    def _stop(self) -> None:
        self.provider.stop()

    def wait_initialized(self, timeout: float = 15.0) -> None:
        """Wait for service discovery to finish (requests arriving at startup)."""
        if self._init_greenlet is not None:
            self._initialized.wait(timeout)

    def _on_klippy_identified(self) -> None:
        pid = (self.server.klippy.info or {}).get("process_id")
        if pid:
            unit = self.provider.unit_for_pid(int(pid))
            if unit:
                self.instance_ids["klipper"] = unit

    # -- services -----------------------------------------------------------
    def update_service_state(self, name: str, active: str, sub: str) -> None:
        """Record a service's state; sends ``notify_service_state_changed``
        when it differs from the last known one."""
        new = {"active_state": active, "sub_state": sub}
        old = self.service_state.get(name)
        if old == new:
            return
        self.service_state[name] = new
        if old is not None or self._initialized.is_set():
            self.server.events.notify("notify_service_state_changed", [{name: dict(new)}])

    def service_action(self, action: str, service: str) -> None:
        """Start, stop or restart an allowed service.

        moonflask's own service answers first: the action runs 0.2 s later.
        Raises: ApiError 400 for a service that is not allowed or not
        installed; what the provider raises when the action fails.
        """
        self.wait_initialized()
        name = service[:-8] if service.endswith(".service") else service
        if name not in self.provider.available:
            if any(name.lower() == a.lower() for a in self.allowed_services):
                raise ApiError(f"Service '{name}' not installed", 400)
            raise ApiError(f"Service '{name}' not allowed", 400)
        if name == self.instance_ids["moonraker"] and action in ("restart", "stop"):
            gevent.spawn_later(0.2, self._own_action, action, name)
            return
        self.provider.do_action(action, name)

    def _own_action(self, action: str, name: str) -> None:
        try:
            self.provider.do_action(action, name)
        except ApiError as err:
            log.error("%s of moonflask's own service failed: %s", action, err.message)

    def power(self, action: str) -> None:
        """``shutdown`` or ``reboot`` the host through the provider.

        Raises: ApiError 503 when the provider is ``none`` or not connected."""
        self.wait_initialized()
        if self.provider.name != "none" and not self.provider.connected:
            raise ApiError(f"Machine {action} is not available: the "
                           f"'{self.provider.name}' provider is not connected", 503)
        if action == "shutdown":
            self.provider.shutdown()
        else:
            self.provider.reboot()

    # -- system info --------------------------------------------------------
    def _static_info(self) -> dict[str, Any]:
        if self._static is None:
            self._static = {
                "python": sysinfo.python_info(),
                "cpu_info": sysinfo.cpu_info(),
                "sd_info": sysinfo.sd_info(),
                "distribution": sysinfo.distribution(),
                "virtualization": sysinfo.virtualization(),
            }
        return self._static

    def system_info(self) -> dict[str, Any]:
        """``machine.system_info``'s ``system_info`` object (reference key order)."""
        self.wait_initialized()
        info = dict(self._static_info())
        info["network"] = sysinfo.network_info()
        info["canbus"] = sysinfo.canbus_info()
        info["provider"] = self.provider.name
        info["available_services"] = list(self.provider.available)
        info["service_state"] = {k: dict(v) for k, v in self.service_state.items()
                                 if k in self.provider.available}
        info["instance_ids"] = dict(self.instance_ids)
        return info

    def query_can(self, interface: str) -> list[dict[str, str]]:
        """Unassigned CAN node UUIDs on ``interface`` (one query at a time)."""
        with self._can_lock:
            return peripherals.query_can_uuids(interface)


def load_component(server: Any, section: Any) -> Machine:
    """Build the ``machine`` component from ``[machine]`` (always loaded)."""
    if section is None and server.config.has_section("machine"):
        section = server.config.section("machine")
    return Machine(server, section)
