"""Notifiers (``[notifier NAME]``): apprise notifications on print job events.
Spec: web_api.md "Notifier APIs", "Debug APIs / Test a notifier".

Options of each section:
- ``url`` (required): an apprise URL (``tgram://...``, ``json://host/path``...);
- ``events``: job events to notify on, newline or comma separated, among
  ``started complete error cancelled paused resumed``, ``*`` for all;
- ``body``, ``title``: Jinja2 templates with Klipper-style delimiters
  (``{expr}``, ``{% stmt %}``), rendered in a sandbox with ``event_name``,
  ``event_args`` (``[prev_stats, new_stats]``: print_stats dicts, so
  ``{event_args[1].filename}`` works) and ``event_message``;
- ``body_format``: apprise body format (``text``, ``markdown``, ``html``);
- ``attach``: a template rendering to one URL or path per line (e.g. a
  webcam snapshot), attached to the notification.

Notifications are sent in their own greenlet; a failing service is logged,
never fatal.
"""
from __future__ import annotations

import logging
from typing import Any

import gevent
import gevent.queue
import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..api import ApiError
from ..config import ConfigError

log = logging.getLogger(__name__)


EVENTS = ("started", "complete", "error", "cancelled", "paused", "resumed")
TEST_STATS: dict[str, Any] = {
    "filename": "notifier_test.gcode", "total_duration": 0.0, "print_duration": 0.0,
    "filament_used": 0.0, "state": "standby", "message": "",
    "info": {"total_layer": None, "current_layer": None},
}
SEND_TIMEOUT = 30.0  # seconds per notification
QUEUE_SIZE = 100     # notifications waiting per notifier


def template_env() -> SandboxedEnvironment:
    """The Jinja2 environment for notifier templates: Klipper's ``{ }``
    expression delimiters, sandboxed, undefined values render empty."""
    return SandboxedEnvironment(block_start_string="{%", block_end_string="%}",
                                variable_start_string="{", variable_end_string="}",
                                comment_start_string="{#", comment_end_string="#}",
                                autoescape=False, undefined=jinja2.Undefined)


class Notifier:
    """One ``[notifier NAME]`` section.

    Raises:
        ConfigError: missing url, unknown event, template syntax error.
    """

    def __init__(self, name: str, section: Any, env: SandboxedEnvironment) -> None:
        self.name = name
        self.url: str = section.get("url")
        raw_events = section.get("events", "*") or "*"
        self.events = [e.strip().lower() for e in raw_events.replace(",", "\n").split()
                       if e.strip()]
        for event in self.events:
            if event != "*" and event not in EVENTS:
                raise ConfigError(f"[notifier {name}]: unknown event '{event}'")
        self.body_src: str | None = section.get("body", None)
        self.title_src: str | None = section.get("title", None)
        self.attach_src: str | None = section.get("attach", None)
        self.body_format: str | None = section.get("body_format", None)
        try:
            self.body = env.from_string(self.body_src or "{event_message}")
            self.title = env.from_string(self.title_src) if self.title_src else None
            self.attach = env.from_string(self.attach_src) if self.attach_src else None
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(f"[notifier {name}]: template error: {err}") from None
        import apprise  # loads every plugin (~8 MB): only when a notifier is configured
        self.apprise = apprise.Apprise()
        if not self.apprise.add(self.url):
            raise ConfigError(f"[notifier {name}]: invalid apprise url")
        self.queue: gevent.queue.Queue = gevent.queue.Queue(QUEUE_SIZE)

    def enqueue(self, event: str, args: list[Any], message: str = "") -> None:
        """Send in the background, in event order (one sender per notifier,
        the task queue worker ``notifier_NAME``); events beyond QUEUE_SIZE
        waiting are dropped with a warning."""
        try:
            self.queue.put_nowait((self.send, (event, args, message)))
        except gevent.queue.Full:
            log.warning("notifier %s: backlog full, %s notification dropped", self.name, event)

    def wants(self, event: str) -> bool:
        """True when this notifier fires on ``event``."""
        return "*" in self.events or event in self.events

    def info(self) -> dict[str, Any]:
        """The ``server.notifiers.list`` entry."""
        return {"name": self.name, "url": self.url, "title": self.title_src,
                "body": self.body_src, "body_format": self.body_format,
                "events": list(self.events), "attach": self.attach_src}

    def send(self, event: str, args: list[Any], message: str = "") -> bool:
        """Render the templates and send; returns apprise's success flag.
        Template errors and service errors are logged and return False."""
        ctx = {"event_name": event, "event_args": args, "event_message": message}
        try:
            body = self.body.render(ctx)
            title = self.title.render(ctx) if self.title is not None else ""
            attach = None
            if self.attach is not None:
                items = [a.strip() for a in self.attach.render(ctx).splitlines() if a.strip()]
                import apprise
                attach = apprise.AppriseAttachment(items) if items else None
        except Exception as err:
            log.warning("notifier %s: template error: %s", self.name, err)
            return False
        kwargs: dict[str, Any] = {"body": body, "title": title}
        if attach is not None:
            kwargs["attach"] = attach
        if self.body_format:
            kwargs["body_format"] = self.body_format
        try:
            with gevent.Timeout(SEND_TIMEOUT):
                ok = bool(self.apprise.notify(**kwargs))
        except gevent.Timeout:
            ok = False
        except Exception as err:
            log.warning("notifier %s: sending failed: %s", self.name, err)
            ok = False
        if not ok:
            log.warning("notifier %s: %s notification not delivered", self.name, event)
        return ok


class Notifiers:
    """Every configured notifier, wired to the job_state events."""

    def __init__(self, server: Any) -> None:
        self.server = server
        env = template_env()
        self.notifiers: dict[str, Notifier] = {}
        cfg = server.config
        for section in cfg.prefix_sections("notifier "):
            name = section.split(None, 1)[1].strip()
            self.notifiers[name] = Notifier(name, cfg.section(section), env)
        from ..workers import task_queue
        for name, notifier in self.notifiers.items():
            server.workers.start(f"notifier_{name}", task_queue.run, notifier.queue,
                                 f"notifier {name}")
        for event in EVENTS:
            server.events.on(f"job_state:{event}", self._handler(event))

    def _handler(self, event: str) -> Any:
        def on_event(prev: dict, new: dict) -> None:
            for notifier in self.notifiers.values():
                if notifier.wants(event):
                    notifier.enqueue(event, [prev, new], new.get("message", ""))
        return on_event

    def test(self, name: str) -> dict[str, Any]:
        """debug.notifiers.test: send notifier ``name`` with test stats."""
        notifier = self.notifiers.get(name)
        if notifier is None:
            raise ApiError(f"Notifier '{name}' not found", 404)
        stats = dict(TEST_STATS, info=dict(TEST_STATS["info"]))
        event = notifier.events[0] if notifier.events else "started"
        ok = notifier.send(event, [stats, stats])
        return {"status": "success" if ok else "failure", "stats": stats}


def load_component(server: Any, _config: Any) -> Notifiers:
    """Create the notifiers (loaded when a ``[notifier NAME]`` section exists,
    as Moonraker: without one ``server.notifiers.list`` is not there)."""
    return Notifiers(server)
