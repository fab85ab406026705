"""Buttons from ``[button NAME]`` sections (Moonraker's ``button``
component).  Spec: configuration.md "[button]", "Button Templates";
web_api.md "Jinja2 Template API Calls", "Button Event" (notify_button_event).

Each button watches a GPIO line (both edges, the kernel's debounce of
``debounce_period``) in its own worker (``moonflask/workers/button.py``)
and renders ``on_press`` / ``on_release`` one event at a time, with
``call_method(METHOD, **kwargs)`` (any JSON-RPC method, through
``server.jsonrpc``), ``send_notification(aux=None)``, ``event`` and
``user_data`` in the context.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ..api import INTERNAL, ApiError
from ..config import ConfigError
from .gpio import InputLine, parse_pin
from .template import TemplateError, get_template

log = logging.getLogger(__name__)



class Button:
    """One button.

    Config: ``type`` (``gpio``), ``pin`` (``^``/``~`` bias, ``!`` invert),
    ``debounce_period`` (>= 0.01 s, default 0.05), ``minimum_event_time``
    (s, default 0), ``on_press``, ``on_release`` (at least one).
    Raises: ConfigError for an invalid option, a missing chip or bindings.
    """

    def __init__(self, server: Any, section: Any) -> None:
        self.server = server
        self.name = section.name.split(None, 1)[1].strip()
        where = f"[{section.name}]"
        self.type = section.get("type", "gpio")
        if self.type != "gpio":
            raise ConfigError(f"{where}: unsupported button type '{self.type}'")
        self.pin = parse_pin(section.get("pin"), where, allow_bias=True)
        self.debounce_period = section.getfloat("debounce_period", 0.05, minval=0.01)
        self.minimum_event_time = section.getfloat("minimum_event_time", 0.0, minval=0.0)
        self.templates = {True: get_template(section, "on_press", None),
                          False: get_template(section, "on_release", None)}
        if self.templates[True] is None and self.templates[False] is None:
            raise ConfigError(f"{where}: at least one of 'on_press' or 'on_release' "
                              "must be provided")
        self.user_data: dict[str, Any] = {}
        self.pressed = False
        self.last_event = time.monotonic()
        self.line = InputLine(self.pin, f"moonflask:{self.name}", where, self.debounce_period)

    def handle_edge(self, pressed: bool, received: float) -> None:
        """Process one debounced edge: ignored when it repeats the current
        state or comes sooner than ``minimum_event_time`` after the last one;
        else the matching template is rendered."""
        if pressed == self.pressed:
            return
        elapsed = received - self.last_event
        if elapsed < self.minimum_event_time:
            return
        self.pressed = pressed
        self.last_event = received
        template = self.templates[pressed]
        if template is None:
            return
        event = {"elapsed_time": elapsed, "received_time": received,
                 "render_time": time.monotonic(), "pressed": pressed}

        def send_notification(aux: Any = None) -> str:
            self.server.events.notify("notify_button_event", [{
                "name": self.name, "type": self.type, "event": event, "aux": aux}])
            return ""
        ctx = {"call_method": self._call_method, "send_notification": send_notification,
               "event": event, "user_data": self.user_data}
        try:
            template.render(ctx)
        except TemplateError as err:
            log.warning("button %s: %s", self.name, err)

    def _call_method(self, method: str, **kwargs: Any) -> Any:
        try:
            return self.server.jsonrpc.call(method, kwargs, transport=INTERNAL)
        except ApiError as err:
            raise TemplateError(f"call_method {method}: {err.message}") from None

    def close(self) -> None:
        """Release the line."""
        self.line.close()


class Buttons:
    """The button component: every ``[button NAME]``, each with its worker."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.buttons = [Button(server, server.config.section(name))
                        for name in server.config.prefix_sections("button ")]
        server.events.on("server:started", self._on_started)
        server.events.on("server:shutdown", self._on_shutdown)

    def _on_started(self) -> None:
        from ..workers.button import run
        for button in self.buttons:
            self.server.workers.start(f"button:{button.name}", run, button)

    def _on_shutdown(self) -> None:
        for button in self.buttons:
            button.close()


def load_component(server: Any, _section: Any) -> Buttons:
    """Create the button component from every ``[button NAME]`` section."""
    return Buttons(server)
