"""MQTT endpoints.  Spec: web_api.md "MQTT APIs" (``server.mqtt.publish``,
``server.mqtt.subscribe``); not served over the ``mqtt`` transport itself, as
in Moonraker (MQTT clients publish and subscribe directly)."""
from __future__ import annotations

from typing import Any

from ..api import ALL_TRANSPORTS, MQTT, ApiBlueprint, ApiRequest

blueprint = ApiBlueprint("mqtt", __name__, component="mqtt")

NOT_MQTT = ALL_TRANSPORTS - {MQTT}


@blueprint.endpoint("/server/mqtt/publish", ["POST"], transports=NOT_MQTT)
def mqtt_publish(req: ApiRequest) -> dict[str, Any]:
    """Publish ``topic`` with ``payload`` (any JSON value; objects and arrays
    JSON encoded, omitted: empty), ``qos`` 0..2, ``retain``; QoS 1/2 wait for
    the broker's acknowledgement up to ``timeout`` seconds (504 after).
    Returns ``{"topic"}``."""
    args = req.args
    topic = args.get_str("topic")
    payload = args.get("payload", None)
    qos = args.get_int("qos", None)
    retain = args.get_boolean("retain", False)
    timeout = args.get_float("timeout", None)
    req.server.lookup_component("mqtt").publish_and_wait(topic, payload, qos, retain, timeout)
    return {"topic": topic}


@blueprint.endpoint("/server/mqtt/subscribe", ["POST"], transports=NOT_MQTT)
def mqtt_subscribe(req: ApiRequest) -> dict[str, Any]:
    """Wait for one message on ``topic`` (no wildcards; a retained one comes
    at once) up to ``timeout`` seconds (504 after).  Returns ``{"topic",
    "payload"}``, the payload decoded from JSON when it parses."""
    args = req.args
    topic = args.get_str("topic")
    qos = args.get_int("qos", None)
    timeout = args.get_float("timeout", None)
    return req.server.lookup_component("mqtt").wait_message(topic, qos, timeout)
