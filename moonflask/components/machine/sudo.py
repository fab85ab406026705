"""Elevated commands: the sudo password (never persisted), access checks,
pending sudo requests from other components and ``notify_sudo_alert``.

Spec: web_api.md "Get Sudo Info", "Set sudo password", "Sudo alert event".
"""
from __future__ import annotations

import getpass
import logging
import os
import shutil
from typing import Any, Callable

from ...api import ApiError
from .sysinfo import run_cmd

log = logging.getLogger(__name__)

SudoCallback = Callable[[], Any]


class SudoManager:
    """Runs commands as root and tracks sudo requests.

    Args:
        server: the :class:`moonflask.app.Server` (for notifications).
        password: ``[machine] sudo_password`` (None when unset); kept in
            memory only.
    """

    def __init__(self, server: Any, password: str | None = None) -> None:
        self.server = server
        self.password = password or None
        self.requests: list[tuple[SudoCallback, str]] = []
        try:
            self.linux_user = getpass.getuser()
        except Exception:
            self.linux_user = str(os.getuid())

    @property
    def is_root(self) -> bool:
        """True when moonflask runs as root (commands need no sudo)."""
        return os.geteuid() == 0

    def run(self, cmd: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        """Run ``cmd`` as root: directly when already root, else through
        ``sudo -S`` with the stored password (``sudo -n`` without one).

        Returns: ``(returncode, stdout, stderr)`` (-1 when sudo is missing).
        """
        if self.is_root:
            return run_cmd(cmd, timeout=timeout)
        if self.password is None:
            return run_cmd(["sudo", "-n", *cmd], timeout=timeout)
        return run_cmd(["sudo", "-S", "-p", "", *cmd], timeout=timeout,
                       input=(self.password + "\n").encode())

    def check_access(self) -> bool:
        """True when moonflask can run commands as root right now."""
        if self.is_root:
            return True
        if not shutil.which("sudo"):
            return False
        rc, _, _ = self.run(["true"], timeout=10)
        return rc == 0

    def validate_password(self, password: str) -> bool:
        """Check ``password`` with ``sudo -S -k`` (the cached credential is
        ignored, so the password itself is tested).

        Raises: ApiError 503 when sudo is not installed.
        """
        if not shutil.which("sudo"):
            if self.is_root:
                return True
            raise ApiError("sudo is not installed on this host", 503)
        rc, _, _ = run_cmd(["sudo", "-S", "-k", "-p", "", "true"], timeout=15,
                           input=(password + "\n").encode())
        return rc == 0

    # -- requests -----------------------------------------------------------
    @property
    def messages(self) -> list[str]:
        """The messages of the pending sudo requests."""
        return [msg for _, msg in self.requests]

    def register_request(self, callback: SudoCallback, message: str) -> None:
        """Queue a task needing sudo; it runs once a password is set.

        Args:
            callback: ``callback() -> str | (str, bool)`` run after the password
                is accepted; returns a response line (and whether it restarts
                moonflask).
            message: what the request is for, shown to the user.
        """
        self.requests.append((callback, message))
        self._alert()

    def _alert(self) -> None:
        self.server.events.notify("notify_sudo_alert", [{
            "sudo_requested": bool(self.requests), "sudo_messages": self.messages}])

    def info(self, check_access: bool) -> dict[str, Any]:
        """``machine.sudo.info`` result."""
        return {"sudo_access": self.check_access() if check_access else None,
                "linux_user": self.linux_user,
                "sudo_requested": bool(self.requests),
                "request_messages": self.messages}

    def set_password(self, password: str) -> dict[str, Any]:
        """Validate and store ``password``, then run the pending requests.

        Returns: ``{"sudo_responses": [...], "is_restarting": bool}``.
        Raises: ApiError 401 for a wrong password; 500 when a request fails.
        """
        if not self.validate_password(password):
            raise ApiError("Invalid password, sudo access was denied", 401)
        self.password = password
        responses: list[str] = []
        restarting = False
        failed: list[str] = []
        pending, self.requests = self.requests, []
        for callback, message in pending:
            try:
                out = callback()
            except Exception as err:
                log.exception("sudo request failed: %s", message)
                failed.append(f"{message}: {err}")
                continue
            if isinstance(out, tuple):
                out, restart = out
                restarting = restarting or bool(restart)
            if out:
                responses.append(str(out))
        responses.append("Sudo password successfully set.")
        if pending:
            self._alert()
        if failed:
            raise ApiError("Sudo request(s) failed: " + "; ".join(failed), 500)
        return {"sudo_responses": responses, "is_restarting": restarting}
