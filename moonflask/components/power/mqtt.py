"""``type: mqtt``: a switch reached through the MQTT broker of the ``[mqtt]``
component.  Spec: configuration.md "MQTT Device Configuration",
"Discarding Responses".

Commands are published to ``command_topic`` (``command_payload`` rendered
with ``command`` = on/off); the state arrives on ``state_topic`` and is
``state_response_template`` rendered with ``payload``, ``last_request``
(``refresh``, ``power_on``, ``power_off`` or "" for an update nobody asked
for) and ``response_count``: ``on``, ``off`` or ``discard``.  A request
waits ``state_timeout`` for the answer; an update published from outside
moonflask is reported as an external change.  The MQTT component is used
through ``publish(topic, payload, qos, retain)`` and ``subscribe(topic,
callback, qos)``.
"""
from __future__ import annotations

import logging
from typing import Any

import gevent.event

from ...config import ConfigError
from ..template import TemplateError, get_template
from .device import ON, OFF, DeviceError, PowerDevice

log = logging.getLogger(__name__)


class MqttDevice(PowerDevice):
    """Config: ``command_topic``, ``command_payload``, ``state_topic``
    (required); ``qos`` (the [mqtt] default), ``retain_command_state``,
    ``state_response_template`` (``{payload}``), ``state_timeout`` (2 s),
    ``query_topic``, ``query_payload``, ``query_after_command``.
    Raises ConfigError without an ``[mqtt]`` section."""

    type = "mqtt"
    polls = False

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        if not self.server.config.has_section("mqtt"):
            raise ConfigError(f"[{section.name}]: an mqtt power device needs the [mqtt] "
                              "section (Moonraker's MQTT client)")
        self.qos = section.getint("qos", None, minval=0, maxval=2)
        self.command_topic = section.get("command_topic")
        self.command_payload = get_template(section, "command_payload")
        self.retain_command_state = section.getboolean("retain_command_state", False)
        self.state_topic = section.get("state_topic")
        self.state_template = get_template(section, "state_response_template", None)
        self.state_timeout = section.getfloat("state_timeout", 2.0, minval=0.1)
        self.query_topic = section.get("query_topic", None)
        self.query_payload = get_template(section, "query_payload", None)
        self.query_after_command = section.getboolean("query_after_command", False)
        self.last_request = ""
        self.response_count = 0
        self._reported: bool | None = None
        self._answer = gevent.event.Event()
        self._mqtt: Any = None

    def start(self) -> None:
        """Subscribe to the state topic."""
        self._mqtt = self.server.lookup_component("mqtt", None)
        if self._mqtt is None:
            self.last_error = "the mqtt component is not loaded"
            return
        self._mqtt.subscribe(self.state_topic, self._on_state, self.qos)

    # -- state updates ---------------------------------------------------------
    def _on_state(self, _topic: str, payload: bytes, _props: Any) -> None:
        self.response_count += 1
        text = payload.decode("utf-8", "replace")
        try:
            if self.state_template is None:
                result = text
            else:
                result = self.state_template.render({
                    "payload": text, "last_request": self.last_request,
                    "response_count": self.response_count})
        except TemplateError as err:
            log.warning("power device %s: %s", self.name, err)
            return
        result = result.strip().lower()
        if result == "discard":
            return
        if result not in (ON, OFF):
            log.warning("power device %s: state '%s' is not on, off or discard",
                        self.name, result[:80])
            return
        self._reported = result == ON
        if self.last_request:
            self._answer.set()
        elif self.initialized:
            self._set_state(result, external=True)

    # -- PowerDevice -----------------------------------------------------------
    def _request(self, name: str, publish: list[tuple[str, str, bool]]) -> bool:
        if self._mqtt is None:
            raise DeviceError("the mqtt component is not loaded")
        self._answer.clear()
        self.last_request, self.response_count = name, 0
        try:
            for topic, payload, retain in publish:
                self._mqtt.publish(topic, payload, self.qos, retain)
            if not publish and self._reported is not None:
                return self._reported     # a retained state already arrived
            if not self._answer.wait(self.state_timeout):
                raise DeviceError(f"no state on {self.state_topic} within "
                                  f"{self.state_timeout:g} s")
            return bool(self._reported)
        except Exception as err:
            if isinstance(err, DeviceError):
                raise
            raise DeviceError(f"MQTT: {getattr(err, 'message', err)}") from None
        finally:
            self.last_request = ""

    def _query_publish(self) -> list[tuple[str, str, bool]]:
        if self.query_topic is None:
            return []
        payload = self.query_payload.render({}) if self.query_payload is not None else ""
        return [(self.query_topic, payload, False)]

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        return self._request("refresh", self._query_publish())

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        try:
            payload = self.command_payload.render({"command": ON if on else OFF})
        except TemplateError as err:
            raise DeviceError(str(err)) from None
        publish = [(self.command_topic, payload, self.retain_command_state)]
        if self.query_after_command:
            publish += self._query_publish()
        return self._request("power_on" if on else "power_off", publish)

    def refresh_for_request(self) -> bool:
        """As the reference: with ``query_after_command`` the device is
        queried again before each request (a failed query leaves it in
        ``error``); without, its state is the last one the broker pushed.
        Returns True when the state is known (``on``/``off``)."""
        if self.initialized and self.query_after_command and self.query_topic is not None:
            self.refresh()
        return self.initialized and self.state in (ON, OFF)

    def due(self, now: float) -> bool:
        """Only until initialised: the broker pushes changes."""
        return not self.initialized and now >= self.next_poll
