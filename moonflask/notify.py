"""The event bus: components publish, components and connections receive.

Two kinds of traffic share it:
- internal events (``"klippy:ready"``, ``"klippy:status_update"``,
  ``"file_manager:filelist_changed"`` ...) delivered synchronously to the
  callbacks registered with :meth:`EventBus.on`;
- client notifications (``notify_*`` JSON-RPC messages, web_api.md
  "Appendix / Websocket notifications") sent with :meth:`EventBus.notify`:
  encoded once, queued on every persistent connection.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable

from . import jsonutil

log = logging.getLogger(__name__)


class EventBus:
    """Internal events and client notifications.

    Args:
        connections: the :class:`moonflask.connections.ConnectionManager` whose
            connections receive ``notify_*`` messages.
    """

    def __init__(self, connections: Any) -> None:
        self.connections = connections
        self._handlers: dict[str, list[Callable[..., Any]]] = defaultdict(list)
        self._notify_hooks: list[Callable[[str, Any], Any]] = []

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback(*args)`` whenever ``event`` is emitted."""
        self._handlers[event].append(callback)

    def emit(self, event: str, *args: Any) -> None:
        """Run every callback of ``event``; a failing callback is logged and
        does not stop the others.  Callbacks must not block for long."""
        for cb in list(self._handlers.get(event, ())):
            try:
                cb(*args)
            except Exception:
                log.exception("event handler for %s failed", event)

    def add_notify_hook(self, hook: Callable[[str, Any], Any]) -> None:
        """``hook(method, params)`` sees every client notification (MQTT uses it)."""
        self._notify_hooks.append(hook)

    def notify(self, method: str, params: Any = None) -> None:
        """Send the JSON-RPC notification ``method`` to every connection.

        Args:
            method: the notification name, e.g. ``notify_klippy_ready``.
            params: the ``params`` value; Moonraker sends a list (``[obj]``)
                for most notifications; None omits the field.
        """
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        text = jsonutil.dumps(msg)
        self.connections.broadcast(text)
        for hook in self._notify_hooks:
            try:
                hook(method, params)
            except Exception:
                log.exception("notification hook failed for %s", method)
