"""Issue 14: ``type: mqtt`` power devices through the ``[mqtt]`` component
and a real mosquitto; the test plays a Tasmota-style plug on the broker.

Needs the MQTT component (issue 13) and its broker helper
(tests/mqtt_broker.py); skipped where they or mosquitto are missing.
"""
from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time

import pytest

HAVE_MQTT = importlib.util.find_spec("moonflask.components.mqtt") is not None
try:
    import mqtt_broker
except ImportError:
    mqtt_broker = None
pytestmark = pytest.mark.skipif(
    not HAVE_MQTT or mqtt_broker is None or not mqtt_broker.available(),
    reason="needs the MQTT component (moonflask.components.mqtt), tests/mqtt_broker.py "
           "and mosquitto")


class Plug:
    """A plug on the broker: ``cmnd/NAME/POWER`` ON|OFF|"" (query) ->
    ``stat/NAME/POWER`` ON|OFF; ``silent`` stops answering; ``chatty``
    first answers ``WAIT`` (a response to discard)."""

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.on = False
        self.silent = False
        self.chatty = False
        self.commands: list[str] = []
        self.client = mqtt_broker.Client(port)
        self.client.subscribe(f"cmnd/{name}/POWER")
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                _topic, payload, _retain, _props = self.client.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            text = payload.decode().strip().upper()
            self.commands.append(text)
            if text in ("ON", "OFF"):
                self.on = text == "ON"
            if self.silent:
                continue
            if self.chatty:
                self.publish_state("WAIT")
            self.publish_state()

    def publish_state(self, text: str | None = None) -> None:
        self.client.publish(f"stat/{self.name}/POWER", text or ("ON" if self.on else "OFF"))

    def stop(self) -> None:
        self._stop = True
        self.client.client.loop_stop()
        self.client.client.disconnect()


@pytest.fixture(scope="module")
def broker(tmp_root):
    b = mqtt_broker.Broker(os.path.join(tmp_root, "power-broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def plugs(broker):
    out = {name: Plug(broker.port, name) for name in ("plug", "chatty", "mute")}
    out["chatty"].chatty = True
    yield out
    for p in out.values():
        p.stop()


def device(name: str, extra: str = "") -> str:
    return f"""[power {name}]
type: mqtt
command_topic: cmnd/{name}/POWER
command_payload:
  {{command}}
state_topic: stat/{name}/POWER
query_topic: cmnd/{name}/POWER
state_timeout: 1.0
{extra}
"""


@pytest.fixture(scope="module")
def srv(start_server, broker, plugs):
    return start_server(config=f"""[mqtt]
address: 127.0.0.1
port: {broker.port}
username: {mqtt_broker.USERNAME}
password: {mqtt_broker.PASSWORD}
instance_name: powertest

{device("plug")}
{device("chatty", '''state_response_template:
  {% if payload == "WAIT" %}discard{% else %}{payload}{% endif %}''')}
{device("mute")}
""")


def states(srv) -> dict:
    return {d["device"]: d["status"] for d in
            srv.result("GET", "/machine/device_power/devices")["devices"]}


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def test_query_and_commands(srv, plugs):
    wait_for(lambda: states(srv)["plug"] == "off", what="plug initialised by a query")
    assert "" in plugs["plug"].commands          # the query payload
    assert srv.result("POST", "/machine/device_power/device?device=plug&action=on") == {
        "plug": "on"}
    assert plugs["plug"].on is True and plugs["plug"].commands[-1] == "ON"
    assert srv.result("POST", "/machine/device_power/device?device=plug&action=toggle") == {
        "plug": "off"}
    assert plugs["plug"].on is False


def test_external_update(srv, plugs):
    ws = srv.ws()
    wait_for(lambda: states(srv)["plug"] in ("on", "off"), what="plug known")
    plugs["plug"].on = True
    plugs["plug"].publish_state()
    note = ws.wait_notification("notify_power_changed", timeout=20,
                                predicate=lambda m: m["params"][0]["device"] == "plug")
    assert note["params"][0]["status"] == "on"
    srv.post("/machine/device_power/device?device=plug&action=off")


def test_discarded_responses(srv, plugs):
    wait_for(lambda: states(srv)["chatty"] == "off", what="chatty initialised")
    assert srv.result("POST", "/machine/device_power/device?device=chatty&action=on") == {
        "chatty": "on"}


def test_no_answer(srv, plugs):
    wait_for(lambda: states(srv)["mute"] == "off", what="mute initialised")
    plugs["mute"].silent = True
    resp = srv.post("/machine/device_power/device?device=mute&action=on")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        "Error Setting Device Status: mute to on: no state on stat/mute/POWER within 1 s")
    assert states(srv)["mute"] == "error"
