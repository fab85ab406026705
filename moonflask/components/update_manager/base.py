"""What every updater type shares: the progress reporter that streams
``notify_update_response``, the error type, and the common options.

Spec: update_manager.md "Get update status" (the fields every status object
carries), web_api.md "Update Manager Response".
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import gevent

from ...config import ConfigError

log = logging.getLogger(__name__)

CHANNELS = ("stable", "beta", "dev")
# seconds in one hour of refresh_interval; MOONFLASK_UPDATE_HOUR_SECONDS
# shortens it for tests of the refresher
SERVICE_SETTLE = 2.0  # seconds a restarted service must stay up
HOUR_SECONDS = float(os.environ.get("MOONFLASK_UPDATE_HOUR_SECONDS", "3600"))


class UpdateError(Exception):
    """An update step failed; the message is sent to the client as the
    final ``notify_update_response`` and as the request's error (500)."""


class Reporter:
    """Streams the progress of one update request.

    Args:
        server: the Server (``events.notify``).
        application: the name reported as ``application`` (changes as
            ``full`` walks through its updaters).
    Attributes:
        proc_id: the id of this update request, unique per request.
    """

    def __init__(self, server: Any, application: str) -> None:
        self.server = server
        self.application = application
        self.proc_id = random.randint(10**11, 10**15)

    def __call__(self, message: str, complete: bool = False) -> None:
        """Log ``message`` and send it as one ``notify_update_response``."""
        message = message.rstrip()
        if not message:
            return
        log.info("update %s: %s", self.application, message)
        self.server.events.notify("notify_update_response", [{
            "message": message, "application": self.application,
            "proc_id": self.proc_id, "complete": complete}])


class BaseUpdater:
    """The interface of every updater type and its common options.

    Args:
        manager: the :class:`UpdateManager`.
        name: the updater's name (``moonraker``, ``klipper``, the NAME of
            ``[update_manager NAME]``).
        section: its ConfigSection, or None for the built-in entries.
        default_channel: the channel when the section names none.
    Raises:
        ConfigError: an invalid ``channel``.
    """

    configured_type = "none"
    prefix = "Application"   # how messages name this kind of updater
    managed_services: list[str] = []

    def __init__(self, manager: Any, name: str, section: Any,
                 default_channel: str = "dev") -> None:
        self.manager = manager
        self.server = manager.server
        self.name = name
        get = (section.get if section is not None else (lambda _o, d=None: d))
        self.channel = (get("channel", default_channel) or default_channel).lower()
        if self.channel not in CHANNELS:
            raise ConfigError(f"[update_manager {name}]: option 'channel' must be one of "
                              f"{', '.join(CHANNELS)}, not '{self.channel}'")
        self.channel_invalid = False
        self.info_tags: list[str] = (section.getlist("info_tags", [])
                                     if section is not None else [])
        self.refresh_interval = (section.getint("refresh_interval", manager.refresh_interval,
                                                minval=1)
                                 if section is not None else manager.refresh_interval)
        self.report_anomalies = (section.getboolean("report_anomalies", True)
                                 if section is not None else True)
        self.last_refresh = float(manager.journal.get(name).get("last_refresh", 0.0))

    # -- interface ----------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the local state and the remote's (network); never raises
        for a broken install, records the problem in the status instead."""

    def status(self) -> dict[str, Any]:
        """The status object of update_manager.md (one ``version_info`` entry)."""
        return {"name": self.name, "configured_type": self.configured_type}

    def upgrade(self, rep: Reporter) -> str:
        """Update to the remote version; returns the final message.
        Raises UpdateError."""
        raise UpdateError(f"{self.name}: upgrade is not supported")

    def rollback(self, rep: Reporter) -> str:
        """Return to ``rollback_version``; returns the final message.
        Raises UpdateError."""
        raise UpdateError(f"{self.name}: rollback is not supported")

    def recover(self, rep: Reporter, hard: bool) -> str:
        """Repair a broken install; returns the final message.
        Raises UpdateError."""
        raise UpdateError(f"{self.name}: recovery is not supported")

    def resume(self, rec: dict[str, Any]) -> str:
        """Finish or undo the update that ``rec`` (a journal record found at
        start) describes.  Returns what was done, for the log and status."""
        return "nothing to resume"

    def _service_name(self, svc: str) -> str:
        machine = self.server.lookup_component("machine", None)
        if machine is not None and svc in ("klipper", "moonraker"):
            return machine.instance_ids.get(svc, svc)
        return svc

    def _restart_services(self, rep: Reporter) -> str | None:
        """Restart the managed services; the name of one that did not come
        back, or None.  moonflask's own service is restarted last, after the
        reply (the journal's SERVICES step completes it at the next start)."""
        machine = self.server.lookup_component("machine", None)
        own = None
        for svc in self.managed_services:
            name = self._service_name(svc)
            if svc == "moonraker" or (machine is not None and
                                      name == machine.instance_ids.get("moonraker")):
                own = name
                continue
            if machine is None:
                rep(f"{self.prefix} {self.name}: no machine component, not restarting {name}")
                continue
            rep(f"{self.prefix} {self.name}: Restarting service {name}...")
            try:
                machine.service_action("restart", name)
            except Exception as err:  # ApiError from the provider
                log.error("restart of %s failed: %s", name, err)
                return name
            if not self._service_stays_up(machine, name):
                return name
        if own is not None:
            self.manager.restart_self(rep)
        return None

    @staticmethod
    def _service_stays_up(machine: Any, name: str) -> bool:
        gevent.sleep(SERVICE_SETTLE)
        refresh = getattr(machine.provider, "refresh", None)
        if refresh is not None:
            refresh()
        state = machine.service_state.get(name, {})
        return state.get("active_state") in ("active", "activating") and \
            state.get("sub_state") != "auto-restart"

    def needs_refresh(self, now: float) -> bool:
        """True when ``refresh_interval`` hours passed since the last refresh."""
        return now - self.last_refresh >= self.refresh_interval * HOUR_SECONDS

    def mark_refreshed(self) -> None:
        """Remember the refresh time across restarts."""
        self.last_refresh = time.time()
        self.manager.journal.put_lazy(self.name, last_refresh=self.last_refresh)
