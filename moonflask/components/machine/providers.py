"""Service providers for the ``machine`` component: how services are listed,
watched and started/stopped/restarted, and how the host is shut down.

``[machine] provider``: ``systemd_dbus`` (systemd's Manager over the system
D-Bus, with jeepney), ``systemd_cli`` (``systemctl``), ``supervisord_cli``
(``supervisorctl``) or ``none``.  Each provider keeps ``available`` (the
allowed services found on the host) and ``state`` (``{name: {"active_state",
"sub_state"}}``) and reports changes through ``machine.update_service_state``.

Commands run through gevent's cooperative subprocess (``sh`` is not used: its
I/O threads fail under gevent's monkey-patching with "epoll_wait: Bad file
descriptor").  Spec: web_api.md "Restart a system service" ..
"Start a system service", "Shutdown/Reboot the Operating System",
"Service State Changed".
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any

import gevent

from ...api import ApiError
from .sysinfo import read_text, run_cmd

log = logging.getLogger(__name__)

SYSTEMD_BUS = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"
SYSTEMD_UNIT = "org.freedesktop.systemd1.Unit"
POLICYKIT_ERRORS = ("org.freedesktop.DBus.Error.AccessDenied",
                    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                    "org.freedesktop.PolicyKit1.Error.NotAuthorized")


class BaseProvider:
    """The ``none`` provider, and the interface of the others.

    Args:
        machine: the :class:`moonflask.components.machine.Machine` component.
    """

    name = "none"

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.available: list[str] = []
        self.state: dict[str, dict[str, str]] = {}
        self.connected = False

    def initialize(self) -> None:
        """Discover the allowed services (runs in a greenlet after start)."""

    def stop(self) -> None:
        """Release connections and workers."""

    def unit_for_pid(self, pid: int) -> str | None:
        """The service running process ``pid``, or None."""
        return None

    def do_action(self, action: str, service: str) -> None:
        """Run ``action`` (start|stop|restart) on ``service``.

        Raises: ApiError when the provider cannot or the action fails."""
        raise ApiError(f"Service action '{action}' is not available: "
                       f"the [machine] provider is '{self.name}'", 503)

    def shutdown(self) -> None:
        """Power off (or halt, per ``shutdown_action``) the host."""
        raise ApiError("Machine shutdown is not available: "
                       f"the [machine] provider is '{self.name}'", 503)

    def reboot(self) -> None:
        """Reboot the host."""
        raise ApiError("Machine reboot is not available: "
                       f"the [machine] provider is '{self.name}'", 503)

    # -- helpers ----------------------------------------------------------
    def _set_services(self, states: dict[str, tuple[str, str]]) -> None:
        """Record discovered allowed services and their states, notifying changes."""
        self.available = sorted(states)
        for name, (active, sub) in states.items():
            self.machine.update_service_state(name, active, sub)


def _cgroup_unit(pid: int | str) -> str | None:
    for line in read_text(f"/proc/{pid}/cgroup").splitlines():
        match = re.search(r"/([^/]+)\.service(?:/|$)", line)
        if match:
            return match.group(1)
    return None


class _CliMixin:
    """Status polling shared by the command-line providers."""

    machine: Any

    def _start_polling(self) -> None:
        from ...workers import service_monitor
        self._poller = self.machine.server.workers.start(  # type: ignore
            "service_monitor", service_monitor.poll, self)

    def _poll_after_action(self) -> None:
        def burst() -> None:
            for delay in (0.2, 0.3, 0.5, 1.0, 1.0, 2.0):
                gevent.sleep(delay)
                self.refresh()  # type: ignore
        gevent.spawn(burst)

    def stop(self) -> None:
        poller = getattr(self, "_poller", None)
        if poller is not None:
            poller.stop()


class SystemdCliProvider(_CliMixin, BaseProvider):
    """``systemctl`` on the command line (``sudo`` when not root)."""

    name = "systemd_cli"

    def initialize(self) -> None:
        if not shutil.which("systemctl"):
            self.machine.add_warning("[machine]: systemctl not found, service tracking "
                                     "and actions are disabled")
            return
        self.connected = self.refresh()
        if self.connected:
            self._start_polling()

    def refresh(self) -> bool:
        """List the allowed units with their states; False when systemctl fails."""
        rc, out, err = run_cmd(["systemctl", "list-units", "--all", "--type=service",
                                "--plain", "--no-legend", "--no-pager"], timeout=10)
        if rc != 0:
            log.info("systemctl list-units failed: %s", err.strip())
            return False
        states: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            parts = line.split(None, 4)
            if len(parts) < 4 or not parts[0].endswith(".service"):
                continue
            name = parts[0][:-8]
            if self.machine.is_allowed_unit(name):
                states[name] = (parts[2], parts[3])
        self._set_services(states)
        return True

    def unit_for_pid(self, pid: int) -> str | None:
        return _cgroup_unit(pid)

    def do_action(self, action: str, service: str) -> None:
        rc, _, err = self.machine.sudo.run(["systemctl", action, f"{service}.service"])
        self._poll_after_action()
        if rc != 0:
            raise ApiError(f"Failed to {action} service '{service}': {err.strip()}", 500)

    def shutdown(self) -> None:
        self._power(self.machine.shutdown_action)

    def reboot(self) -> None:
        self._power("reboot")

    def _power(self, verb: str) -> None:
        rc, _, err = self.machine.sudo.run(["systemctl", verb])
        if rc != 0:
            raise ApiError(f"Failed to {verb}: {err.strip()}", 500)


class SupervisordCliProvider(_CliMixin, BaseProvider):
    """``supervisorctl`` on the command line.

    Args:
        config_path: ``[machine] supervisord_config_path``; located
            automatically (``/etc/supervisord.conf``, ``/etc/supervisor/supervisord.conf``,
            the printer data folder) when empty.
    """

    name = "supervisord_cli"
    STATES = {
        "RUNNING": ("active", "running"), "STARTING": ("activating", "start"),
        "BACKOFF": ("activating", "auto-restart"), "STOPPING": ("deactivating", "stop"),
        "STOPPED": ("inactive", "dead"), "EXITED": ("inactive", "exited"),
        "FATAL": ("failed", "failed"), "UNKNOWN": ("unknown", "unknown"),
    }

    def __init__(self, machine: Any, config_path: str | None) -> None:
        super().__init__(machine)
        self.config_path = config_path or self._locate_config()
        self.pids: dict[str, int] = {}

    def _locate_config(self) -> str | None:
        for path in ("/etc/supervisord.conf", "/etc/supervisor/supervisord.conf",
                     os.path.join(self.machine.server.data_path, "supervisord.conf")):
            if os.path.isfile(path):
                return path
        return None

    def _ctl(self, *args: str, timeout: float = 15.0) -> tuple[int, str, str]:
        cmd = ["supervisorctl"]
        if self.config_path:
            cmd += ["-c", self.config_path]
        return run_cmd(cmd + list(args), timeout=timeout)

    def initialize(self) -> None:
        if not shutil.which("supervisorctl"):
            self.machine.add_warning("[machine]: supervisorctl not found, service "
                                     "tracking and actions are disabled")
            return
        self.connected = self.refresh()
        if not self.connected:
            self.machine.add_warning("[machine]: supervisord not reachable, service "
                                     "tracking and actions are disabled")
            return
        self._start_polling()

    def refresh(self) -> bool:
        """Parse ``supervisorctl status``; False when supervisord is unreachable."""
        rc, out, err = self._ctl("status")
        # exit status 3 = some program not running: still a valid listing
        if rc not in (0, 3) or "refused connection" in out or "no such file" in out.lower():
            log.info("supervisorctl status failed (%s): %s", rc, (out + err).strip()[:200])
            return False
        states: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            parts = line.split(None, 2)
            if len(parts) < 2 or parts[1] not in self.STATES:
                continue
            name = parts[0].split(":")[-1]
            if not self.machine.is_allowed_unit(name):
                continue
            states[name] = self.STATES[parts[1]]
            match = re.search(r"pid (\d+)", line)
            if match:
                self.pids[name] = int(match.group(1))
        self._set_services(states)
        return True

    def unit_for_pid(self, pid: int) -> str | None:
        for name, p in self.pids.items():
            if p == pid:
                return name
        return None

    def do_action(self, action: str, service: str) -> None:
        # a restart is a stop then a start, so that clients see both transitions
        for step in (("stop", "start") if action == "restart" else (action,)):
            rc, out, err = self._ctl(step, service, timeout=60)
            text = (out + err).strip()
            if rc != 0 or "ERROR" in text:
                if not (step == "stop" and "not running" in text):
                    self._poll_after_action()
                    raise ApiError(f"Failed to {action} service '{service}': {text}", 500)
            self.refresh()
        self._poll_after_action()

    def shutdown(self) -> None:
        self._power(["shutdown", "-h" if self.machine.shutdown_action == "halt" else "-P",
                     "now"])

    def reboot(self) -> None:
        self._power(["shutdown", "-r", "now"])

    def _power(self, cmd: list[str]) -> None:
        rc, _, err = self.machine.sudo.run(cmd)
        if rc != 0:
            raise ApiError(f"Failed to run {' '.join(cmd)}: {err.strip()}", 500)


def missing_system_bus() -> str | None:
    """Why the system D-Bus cannot be reached without trying it: its
    address (``DBUS_SYSTEM_BUS_ADDRESS``, default
    ``unix:path=/var/run/dbus/system_bus_socket``) names only unix socket
    paths and none exists.  None when it may be reachable."""
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS",
                             "unix:path=/var/run/dbus/system_bus_socket")
    for transport in address.split(";"):
        if not transport.startswith("unix:path="):
            return None
        if os.path.exists(transport[len("unix:path="):].split(",")[0]):
            return None
    return f"no system bus socket at {address}"


class SystemdDbusProvider(BaseProvider):
    """systemd's Manager interface over the system D-Bus (jeepney).

    The bus address comes from ``DBUS_SYSTEM_BUS_ADDRESS`` (default
    ``unix:path=/var/run/dbus/system_bus_socket``).  State changes arrive as
    ``PropertiesChanged`` signals of each unit; PolicyKit refusals become
    ApiError 403 with a message naming the missing permission.
    """

    name = "systemd_dbus"
    TIMEOUT = 10.0

    def __init__(self, machine: Any) -> None:
        super().__init__(machine)
        self.router: Any = None
        self.unit_paths: dict[str, str] = {}
        self._signals: Any = None
        self._reader: Any = None

    def initialize(self) -> None:
        try:
            missing = missing_system_bus()
            if missing:
                raise OSError(missing)  # jeepney (0.4 MiB) is not even loaded
            from jeepney.io.threading import DBusRouter, open_dbus_connection
            self.router = DBusRouter(open_dbus_connection(bus="SYSTEM"))
        except Exception as err:
            log.info("D-Bus not available: %s", err)
            self.machine.add_warning("[machine]: DBus Connection Not available, systemd "
                                     " service tracking and actions are disabled")
            return
        try:
            self._call("Subscribe")
            self._discover()
        except Exception as err:
            log.warning("systemd over D-Bus not usable: %s", err)
            self.machine.add_warning("[machine]: systemd not reachable over DBus, "
                                     f"service tracking and actions are disabled ({err})")
            self.stop()
            return
        self.connected = True

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self.router is not None:
            try:
                self.router.close()
            except Exception:
                pass
            self.router = None
        self.connected = False

    # -- D-Bus plumbing -----------------------------------------------------
    def _call(self, method: str, signature: str | None = None, body: tuple = (),
              path: str = SYSTEMD_PATH, interface: str = SYSTEMD_MANAGER) -> tuple:
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import unwrap_msg
        if self.router is None:
            raise ApiError("DBus Connection Not available", 503)
        addr = DBusAddress(path, bus_name=SYSTEMD_BUS, interface=interface)
        msg = new_method_call(addr, method, signature, body)
        reply = self.router.send_and_get_reply(msg, timeout=self.TIMEOUT)
        return unwrap_msg(reply)

    def _discover(self) -> None:
        from jeepney import MatchRule, message_bus
        from jeepney.wrappers import unwrap_msg
        (units,) = self._call("ListUnits")
        states: dict[str, tuple[str, str]] = {}
        for unit in units:
            uname, _desc, _load, active, sub = unit[:5]
            path = unit[6]
            if not uname.endswith(".service"):
                continue
            name = uname[:-8]
            if self.machine.is_allowed_unit(name):
                states[name] = (active, sub)
                self.unit_paths[name] = path
        rule = MatchRule(type="signal", interface="org.freedesktop.DBus.Properties",
                         member="PropertiesChanged", path_namespace="/org/freedesktop/systemd1/unit")
        unwrap_msg(self.router.send_and_get_reply(message_bus.AddMatch(rule),
                                                  timeout=self.TIMEOUT))
        import queue as _queue
        self._signals = self.router.filter(rule, queue=_queue.Queue(), bufsize=0)
        from ...workers import service_monitor
        self._reader = self.machine.server.workers.start(
            "service_monitor", service_monitor.follow_signals, self)
        self._set_services(states)

    def next_signal(self) -> Any:
        """Block until systemd sends the next ``PropertiesChanged`` signal."""
        return self._signals.queue.get()

    def handle_signal(self, msg: Any) -> None:
        """Apply one ``PropertiesChanged`` signal of a unit's ActiveState /
        SubState to the machine's service states (other signals are ignored)."""
        paths = {p: n for n, p in self.unit_paths.items()}
        name = paths.get(msg.header.fields.get(1))  # HeaderFields.path == 1
        if name is None:
            return
        try:
            iface, changed, _inval = msg.body
        except ValueError:
            return
        if iface != SYSTEMD_UNIT:
            return
        if "ActiveState" not in changed and "SubState" not in changed:
            return
        cur = self.state.get(name, {})
        active = changed.get("ActiveState", (None, cur.get("active_state", "unknown")))[1]
        sub = changed.get("SubState", (None, cur.get("sub_state", "unknown")))[1]
        self.machine.update_service_state(name, active, sub)

    def _dbus_error(self, what: str, err: Exception) -> ApiError:
        name = getattr(err, "name", "")
        data = getattr(err, "data", ())
        detail = data[0] if data and isinstance(data[0], str) else str(err)
        if name in POLICYKIT_ERRORS:
            return ApiError(f"{what} denied by PolicyKit ({name}): {detail}. "
                            "Moonflask's user needs a PolicyKit rule allowing systemd "
                            "unit management and power actions.", 403)
        return ApiError(f"{what} failed: {name or type(err).__name__}: {detail}", 500)

    def unit_for_pid(self, pid: int) -> str | None:
        return _cgroup_unit(pid)

    def do_action(self, action: str, service: str) -> None:
        method = {"start": "StartUnit", "stop": "StopUnit", "restart": "RestartUnit"}[action]
        try:
            self._call(method, "ss", (f"{service}.service", "replace"))
        except ApiError:
            raise
        except Exception as err:
            raise self._dbus_error(f"{action.capitalize()} of service '{service}'", err) from None

    def shutdown(self) -> None:
        method = "Halt" if self.machine.shutdown_action == "halt" else "PowerOff"
        try:
            self._call(method)
        except ApiError:
            raise
        except Exception as err:
            raise self._dbus_error("Machine shutdown", err) from None

    def reboot(self) -> None:
        try:
            self._call("Reboot")
        except ApiError:
            raise
        except Exception as err:
            raise self._dbus_error("Machine reboot", err) from None
