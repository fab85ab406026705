"""Issue 13: the [mqtt] component against a real mosquitto (password file, TLS
listener), compared with the reference Moonraker 0.11.0's recordings
(scripts/capture_mqtt_reference.py -> tests/reference/mqtt_*.json)."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import requests

import mqtt_broker
from helpers import Moonflask, Printer
from shapes import reference, shape_diff

pytestmark = pytest.mark.skipif(not mqtt_broker.available(),
                                reason="mosquitto (Debian package mosquitto) is not installed")

CONF = """
[secrets]
secrets_path: secrets.json

[mqtt]
address: 127.0.0.1
port: {port}
username: {{secrets.mqtt.username}}
password: {{secrets.mqtt.password}}
instance_name: {instance}
mqtt_protocol: {protocol}
status_objects:
  webhooks
  toolhead=position,homed_axes
  print_stats=state
publish_split_status: {split}
{extra}
"""


@pytest.fixture(scope="module")
def broker(tmp_root):
    b = mqtt_broker.Broker(os.path.join(tmp_root, "mqtt-broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def printer(printer_data, tmp_root):
    """The simulated printer with the PUBLISH_ALERT macro (publish_mqtt_topic)."""
    import sim_printer
    shared = mqtt_broker.printer_shared_dir(os.path.join(tmp_root, "mqtt-shared"),
                                            sim_printer.shared_dir())
    old = os.environ.get("MOONFLASK_SHARED")
    os.environ["MOONFLASK_SHARED"] = shared
    try:
        p = Printer(os.path.join(printer_data, "klippy"), os.path.join(printer_data, "gcodes"))
        p.start()
    finally:
        if old is None:
            os.environ.pop("MOONFLASK_SHARED", None)
        else:
            os.environ["MOONFLASK_SHARED"] = old
    yield p
    p.stop()


def start_mqtt(start_server, broker, tmp_root, instance, split=False, protocol="v3.1.1",
               port=None, extra="", env=None):
    """A moonflask of its own (own data folder) on the broker, instance ``instance``."""
    data = os.path.join(tmp_root, "mqtt-" + instance)
    os.makedirs(os.path.join(data, "config"), exist_ok=True)
    with open(os.path.join(data, "config", "secrets.json"), "w") as fh:
        json.dump({"mqtt": {"username": mqtt_broker.USERNAME,
                            "password": mqtt_broker.PASSWORD}}, fh)
    config = CONF.format(port=port or broker.port, instance=instance, split=split,
                         protocol=protocol, extra=extra)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return start_server(config=config, data_path=data)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def srv(start_server, broker, tmp_root):
    return start_mqtt(start_server, broker, tmp_root, "mf")


@pytest.fixture()
def client(broker):
    c = mqtt_broker.Client(broker.port)
    yield c
    c.close()


def wait_online(client, instance, timeout=20.0):
    client.subscribe(f"{instance}/moonraker/status")
    client.wait(f"{instance}/moonraker/status", timeout, lambda p: p == {"server": "online"})


class Api:
    """JSON-RPC over MQTT against one instance."""

    def __init__(self, client, instance):
        self.client = client
        self.instance = instance
        self.rid = 0
        client.subscribe(f"{instance}/moonraker/api/response")

    def request(self, method, params=None, raw=None, timeout=30.0):
        self.rid += 1
        rid = self.rid
        frame = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            frame["params"] = params
        self.client.publish(f"{self.instance}/moonraker/api/request",
                            raw if raw is not None else json.dumps(frame))
        pred = None if raw is not None else (lambda p: isinstance(p, dict) and p.get("id") == rid)
        payload, _retain, _props = self.client.wait(f"{self.instance}/moonraker/api/response",
                                                    timeout, pred)
        return payload


def ref_body(name):
    return reference("mqtt_" + name)["body"]


def ref_messages(name):
    return reference("mqtt_" + name)["messages"]


def ref_topic(name, topic):
    """The first recorded ``[topic, payload, retain]`` on ``ref/TOPIC``."""
    return [m for m in ref_messages(name) if m[0] == "ref/" + topic][0]


def test_request_response(srv, client):
    wait_online(client, "mf")
    api = Api(client, "mf")
    info = api.request("server.info")
    assert info["result"]["klippy_state"] == "ready"
    assert "mqtt" in info["result"]["components"]
    assert set(ref_body("api_server.info")["result"]) <= set(info["result"])
    got = api.request("printer.objects.query", {"objects": {"webhooks": None}})
    assert shape_diff(ref_body("api_objects.query"), got) == []
    assert got["result"]["status"]["webhooks"]["state"] == "ready"
    assert shape_diff(ref_body("api_printer.info"), api.request("printer.info"),
                      free=("$.result",)) == []
    assert api.request("printer.gcode.script", {"script": "M118 over mqtt"})["result"] == "ok"
    # errors as the reference gives them (code and message), ids kept
    for name, method, params in [
            ("unknown_method", "server.nope", None),
            ("files.metadata.no_arg", "server.files.metadata", None),
            ("server.mqtt.publish", "server.mqtt.publish", {"topic": "x/y"}),
            ("identify", "server.connection.identify",
             {"client_name": "x", "version": "1", "type": "web", "url": "http://x"})]:
        got = api.request(method, params)
        ref = ref_body("api_" + name)
        assert got["error"] == ref["error"], name
        assert got["id"] == api.rid
    got = api.request("server.files.metadata", {"filename": "nope.gcode"})
    ref = ref_body("api_files.metadata.missing")
    assert got["error"]["code"] == ref["error"]["code"]
    assert got["error"]["message"] == "Metadata not available for <nope.gcode>"
    assert api.request("", raw="{not json") == ref_body("api_bad_json")
    batch = api.request("", raw=json.dumps([
        {"jsonrpc": "2.0", "method": "server.info", "id": 1},
        {"jsonrpc": "2.0", "method": "printer.info", "id": 2}]))
    assert [r["id"] for r in batch] == [1, 2]
    ts = int(time.time() * 1e6)
    assert "result" in api.request("server.info", {"mqtt_timestamp": ts})
    dup = api.request("server.info", {"mqtt_timestamp": ts})
    assert dup["error"] == ref_body("api_timestamp.dup")["error"]


def test_server_config_section(srv):
    ours = srv.result("GET", "/server/config")["config"]["mqtt"]
    ref = reference("mqtt_http_server.config")["body"]["result"]["config"]["mqtt"]
    extra = {"enable_ha_discovery", "ha_discovery_prefix"}   # moonflask's own
    assert set(ours) - extra == set(ref)
    assert shape_diff(ref, {k: v for k, v in ours.items() if k not in extra},
                      free=("$.status_objects",)) == []
    assert ours["status_objects"] == {"webhooks": None, "toolhead": "position,homed_axes",
                                      "print_stats": "state"}


def test_status_on_klippy_change_combined(srv, client):
    wait_online(client, "mf")
    client.subscribe("mf/klipper/status")
    api = Api(client, "mf")
    assert api.request("printer.gcode.script", {"script": "G28"}, timeout=60)["result"] == "ok"
    payload, retain, _ = client.wait("mf/klipper/status", 15,
                                     lambda p: p["status"].get("toolhead", {}).get(
                                         "homed_axes") == "xyz")
    ref = ref_topic("status_after_G28", "klipper/status")[1]
    assert shape_diff(ref, payload, free=("$.status",)) == []
    assert set(payload["status"]["toolhead"]) <= {"position", "homed_axes"}
    api.request("printer.gcode.script", {"script": "G1 X42 F6000\nM400"}, timeout=60)
    payload, _, _ = client.wait("mf/klipper/status", 15, lambda p: p["status"].get(
        "toolhead", {}).get("position", [0])[0] == 42.0)
    assert list(payload["status"]) == ["toolhead"]
    assert list(payload["status"]["toolhead"]) == ["position"]


def test_status_split_retained(start_server, broker, tmp_root, client):
    client.subscribe("mfsplit/klipper/state/#")
    srv2 = start_mqtt(start_server, broker, tmp_root, "mfsplit", split=True)
    client.wait("mfsplit/klipper/state/print_stats/state", 20)
    # every tracked field of the snapshot, retained (late subscribers get it)
    late = mqtt_broker.Client(broker.port)
    try:
        late.subscribe("mfsplit/klipper/state/#")
        payload, retain, _ = late.wait("mfsplit/klipper/state/webhooks/state", 10)
        assert retain and payload["value"] == "ready"
        ref = ref_topic("retained_after_kill_split", "klipper/state/webhooks/state")
        assert ref[2] is True and shape_diff(ref[1], payload) == []
    finally:
        late.close()
    srv2.post("/printer/gcode/script", params={"script": "G1 X33 F6000\nM400"}, timeout=60)
    payload, _, _ = client.wait("mfsplit/klipper/state/toolhead/position", 15,
                                lambda p: p["value"][0] == 33.0)
    ref = ref_topic("status_after_G28_split", "klipper/state/toolhead/position")
    assert shape_diff(ref[1], payload) == []
    assert not list(t for t, _p, _r in client.drain() if t == "mfsplit/klipper/status")


def test_last_will_on_kill(start_server, broker, tmp_root, client):
    srv3 = start_mqtt(start_server, broker, tmp_root, "mfwill")
    wait_online(client, "mfwill")
    srv3.kill()
    payload, _, _ = client.wait("mfwill/moonraker/status", 120,
                                lambda p: p == {"server": "offline"})
    assert payload == ref_topic("last_will", "moonraker/status")[1]
    late = mqtt_broker.Client(broker.port)
    try:
        late.subscribe("mfwill/moonraker/status")
        payload, retain, _ = late.wait("mfwill/moonraker/status", 10)
        assert (payload, retain) == tuple(ref_topic("retained_after_kill", "moonraker/status")[1:])
    finally:
        late.close()


def test_clean_stop_publishes_offline(start_server, broker, tmp_root, client):
    srv4 = start_mqtt(start_server, broker, tmp_root, "mfstop")
    wait_online(client, "mfstop")
    srv4.stop()
    client.wait("mfstop/moonraker/status", 10, lambda p: p == {"server": "offline"})


def test_publish_and_subscribe_api(srv, client):
    ws = srv.ws()
    client.subscribe("test/pub")
    cases = [({"topic": "test/pub", "payload": "hello"}, "hello"),
             ({"topic": "test/pub", "payload": {"a": [1, 2]}, "qos": 1, "timeout": 5},
              {"a": [1, 2]}),
             ({"topic": "test/pub", "payload": 12.5}, 12.5),
             ({"topic": "test/pub", "payload": True}, True),
             ({"topic": "test/pub"}, "")]
    for params, want in cases:
        reply = ws.request("server.mqtt.publish", params)
        assert shape_diff(reference("mqtt_rpc_publish.text")["body"], reply) == []
        assert reply["result"] == {"topic": "test/pub"}
        payload, _, _ = client.wait("test/pub", 10)
        assert payload == want
    resp = srv.post("/server/mqtt/publish", json={"topic": "test/pub", "payload": "h"})
    assert resp.json() == reference("mqtt_http_publish")["body"]
    for name, params in [("publish.no_topic", {"payload": "x"}),
                         ("publish.bad_qos", {"topic": "test/pub", "qos": 3})]:
        assert ws.request("server.mqtt.publish", params)["error"] == \
            reference("mqtt_rpc_" + name)["body"]["error"]
    # a wildcard: the reference says "MQTT Message Queue Full" (529); moonflask names the cause
    err = ws.request("server.mqtt.publish", {"topic": "test/#"})["error"]
    assert err == {"code": 400, "message": "Wildcards may not be used"}
    # subscribe: timeout, retained, text
    began = time.monotonic()
    err = ws.request("server.mqtt.subscribe", {"topic": "test/none", "timeout": 1})["error"]
    assert err == reference("mqtt_rpc_subscribe.timeout")["body"]["error"]
    assert 0.9 <= time.monotonic() - began < 5
    resp = srv.post("/server/mqtt/subscribe", json={"topic": "test/none2", "timeout": 0.5})
    assert resp.status_code == reference("mqtt_http_subscribe.timeout")["status"] == 504
    client.publish("test/retained", {"a": [1, 2]}, retain=True)
    got = ws.request("server.mqtt.subscribe", {"topic": "test/retained", "timeout": 5})
    assert shape_diff(reference("mqtt_rpc_subscribe.retained")["body"], got) == []
    assert got["result"] == {"topic": "test/retained", "payload": {"a": [1, 2]}}
    client.publish("test/text", "plain text", retain=True)
    got = ws.call("server.mqtt.subscribe", {"topic": "test/text", "timeout": 5})
    assert got == reference("mqtt_rpc_subscribe.text")["body"]["result"]
    for name, params in [("subscribe.wildcard", {"topic": "test/+", "timeout": 1}),
                         ("subscribe.no_topic", {"timeout": 1})]:
        assert ws.request("server.mqtt.subscribe", params)["error"] == \
            reference("mqtt_rpc_" + name)["body"]["error"]
    # a message published while waiting
    ws2 = srv.ws()
    ws2.send_raw(json.dumps({"jsonrpc": "2.0", "method": "server.mqtt.subscribe", "id": 99,
                             "params": {"topic": "test/later", "timeout": 10}}))
    time.sleep(0.5)
    client.publish("test/later", "now")
    assert ws2.reply_for(99)["result"] == {"topic": "test/later", "payload": "now"}


def test_publish_mqtt_topic_remote_method(srv, client):
    client.subscribe("mf/klipper/alert")
    srv.post("/printer/gcode/script", params={"script": "PUBLISH_ALERT PAYLOAD=fire"})
    payload, _, _ = client.wait("mf/klipper/alert", 10)
    ref = ref_topic("publish_mqtt_topic.messages", "klipper/alert")
    assert payload == ref[1] == "fire"


def test_tls_listener(start_server, broker, tmp_root, client):
    start_mqtt(start_server, broker, tmp_root, "mftls", port=broker.tls_port,
               extra="enable_tls: True", env={"SSL_CERT_FILE": broker.ca})
    tls_client = mqtt_broker.Client(broker.tls_port, tls_ca=broker.ca)
    try:
        wait_online(tls_client, "mftls")
        assert Api(tls_client, "mftls").request("server.info")["result"]["klippy_state"] == "ready"
    finally:
        tls_client.close()


def test_v5_response_topic(start_server, broker, tmp_root):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    import paho.mqtt.client as paho
    start_mqtt(start_server, broker, tmp_root, "mfv5", protocol="v5")
    c = mqtt_broker.Client(broker.port, protocol=paho.MQTTv5)
    try:
        wait_online(c, "mfv5")
        c.subscribe("my/replies")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "my/replies"
        props.CorrelationData = b"corr-17"
        c.publish("mfv5/moonraker/api/request",
                  {"jsonrpc": "2.0", "method": "printer.info", "id": 5}, properties=props)
        payload, _, got_props = c.wait("my/replies", 10)
        assert payload["id"] == 5 and payload["result"]["state"] == "ready"
        assert got_props.CorrelationData == b"corr-17"
    finally:
        c.close()


def test_home_assistant_discovery(start_server, broker, tmp_root, client):
    """Beyond the reference: Home Assistant discovery of the tracked fields."""
    client.subscribe("homeassistant/sensor/mfha/#")
    start_mqtt(start_server, broker, tmp_root, "mfha", extra="enable_ha_discovery: True")
    configs = {}
    deadline = time.monotonic() + 20
    while len(configs) < 6 and time.monotonic() < deadline:
        for topic, payload, _r in client.drain():
            if topic.startswith("homeassistant/sensor/mfha/"):
                configs[topic] = payload
        time.sleep(0.1)
    cfg = configs["homeassistant/sensor/mfha/toolhead_homed_axes/config"]
    assert cfg["state_topic"] == "mfha/klipper/state/toolhead/homed_axes"
    assert cfg["value_template"] == "{{ value_json.value }}"
    assert cfg["availability"][0]["topic"] == "mfha/moonraker/status"
    assert cfg["device"]["identifiers"] == ["mfha"]
    assert "homeassistant/sensor/mfha/klippy_state/config" in configs
    # what the state topic carries answers the template, retained for HA restarts
    late = mqtt_broker.Client(broker.port)
    try:
        late.subscribe(cfg["state_topic"])
        payload, retain, _ = late.wait(cfg["state_topic"], 10)
        assert retain and isinstance(payload["value"], str)
        late.subscribe("homeassistant/sensor/mfha/print_stats_state/config")
        got, retain, _ = late.wait("homeassistant/sensor/mfha/print_stats_state/config", 10)
        assert retain and got["unique_id"] == "mfha_print_stats_state"
    finally:
        late.close()


def test_wrong_password_is_refused_and_retried(start_server, broker, tmp_root, client):
    client.subscribe("mfbadpw/moonraker/status")
    srv = start_mqtt(start_server, broker, tmp_root, "mfbadpw")
    srv.stop()   # restarted below with a wrong password
    conf = open(srv.config_path).read().replace("{secrets.mqtt.password}", "wrong")
    open(srv.config_path, "w").write(conf)
    srv.start()
    srv.wait_klippy_state("ready")
    deadline = time.monotonic() + 20
    refusals = 0
    while refusals < 2 and time.monotonic() < deadline:   # refused, then retried
        refusals = open(srv.log_path).read().count("refused the connection")
        time.sleep(0.2)
    assert refusals >= 2
    assert srv.result("GET", "/server/info")["klippy_state"] == "ready"
    online = [p for t, p, _r in client.drain() if t == "mfbadpw/moonraker/status"
              and p == {"server": "online"}]
    assert len(online) == 1   # only from the first start, with the right password
    srv.stop()


def test_status_interval_limits_the_rate(start_server, broker, tmp_root, client):
    srv = start_mqtt(start_server, broker, tmp_root, "mfrate", extra="status_interval: 1.0")
    client.subscribe("mfrate/klipper/status")
    srv.post("/printer/gcode/script", params={"script": "G28"}, timeout=60)
    client.drain()
    # the position changes every ~0.2 s for about 3 s (Klippy runs in batch
    # mode here: each move completes at once, the pace is the test's) ...

    def moves():
        for i in range(12):
            srv.post("/printer/gcode/script", params={"script": f"G1 X{20 + i} F6000"})
            time.sleep(0.2)
    mover = threading.Thread(target=moves)
    mover.start()
    stamps, last = [], None
    deadline = time.monotonic() + 20
    while (last is None or last[0] != 31.0) and time.monotonic() < deadline:
        try:
            payload, _r, _p = client.wait("mfrate/klipper/status", 5)
        except TimeoutError:
            break
        stamps.append(time.monotonic())
        last = payload["status"].get("toolhead", {}).get("position", last)
    mover.join()
    assert last[0] == 31.0 and 2 <= len(stamps) <= 5, (last, len(stamps))
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) > 0.8, gaps   # ... but is published at most once a second


def test_broker_restart_reconnects_and_delivers_queue(srv, broker, client):
    wait_online(client, "mf")
    client.close()
    broker.stop()
    # published while the broker is away: queued, sent after the reconnect
    for i in range(3):
        assert srv.result("POST", "/server/mqtt/publish",
                          json={"topic": f"queued/{i}", "payload": {"n": i}, "retain": True}) \
            == {"topic": f"queued/{i}"}
    resp = srv.post("/server/mqtt/publish", json={"topic": "queued/qos1", "payload": "q1",
                                                  "qos": 1, "retain": True, "timeout": 0.5})
    assert resp.status_code == 504
    assert resp.json()["error"]["message"] == "MQTT Publish Timed Out"
    # the queue is bounded: once full, a publish is refused with a clear error
    session = requests.Session()
    for n in range(5000):
        resp = session.post(srv.url + "/server/mqtt/publish",
                            json={"topic": "flood", "payload": n}, timeout=15)
        if resp.status_code != 200:
            break
    assert resp.status_code == 529 and n == 4096 - 4, (n, resp.text)
    assert resp.json()["error"]["message"].startswith("MQTT Message Queue Full: 4096 messages")
    broker.start()
    late = mqtt_broker.Client(broker.port)
    try:
        wait_online(late, "mf", timeout=60)
        late.subscribe("queued/#")
        got = {}
        deadline = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < deadline:
            for topic, payload, _retain in late.drain():
                got[topic] = payload
            time.sleep(0.1)
        assert got == {"queued/0": {"n": 0}, "queued/1": {"n": 1}, "queued/2": {"n": 2},
                       "queued/qos1": "q1"}
        # the API topic is subscribed again
        assert Api(late, "mf").request("server.info")["result"]["klippy_state"] == "ready"
    finally:
        late.close()


def test_klippy_state_topic(srv, printer, client):
    """Beyond the reference: Klippy's state changes, retained."""
    client.subscribe("mf/moonraker/klippy_state")
    payload, retain, _ = client.wait("mf/moonraker/klippy_state", 10)
    assert retain and payload["klippy_state"] == "ready"
    printer.kill()
    client.wait("mf/moonraker/klippy_state", 20,
                lambda p: p["klippy_state"] == "disconnected")
    printer.start()
    seen = []
    client.wait("mf/moonraker/klippy_state", 60,
                lambda p: seen.append(p["klippy_state"]) or p["klippy_state"] == "ready")
    assert "startup" in seen
    srv.wait_klippy_state("ready")


def test_farm_three_printers_one_broker(broker, tmp_root, client):
    """3 moonflask + 3 simulated printers on one broker: a farm dashboard
    subscribes ``+/klipper/status`` and ``+/moonraker/status``, sees every
    printer, and sees the one whose server dies go offline."""
    printers, servers = [], []
    try:
        for i in range(3):
            root = os.path.join(tmp_root, f"farm{i}")
            p = Printer(os.path.join(root, "klippy"), os.path.join(root, "gcodes"))
            printers.append(p.start(wait=False))
        for i, p in enumerate(printers):
            data = os.path.join(tmp_root, f"farm{i}", "data")
            os.makedirs(os.path.join(data, "config"), exist_ok=True)
            with open(os.path.join(data, "config", "secrets.json"), "w") as fh:
                json.dump({"mqtt": {"username": mqtt_broker.USERNAME,
                                    "password": mqtt_broker.PASSWORD}}, fh)
            srv = Moonflask(data, p.socket_path, CONF.format(
                port=broker.port, instance=f"farm{i}", split=False,
                protocol=("v3.1", "v3.1.1", "v5")[i], extra=""))   # each protocol
            servers.append(srv.start())
        client.subscribe("+/klipper/status")
        client.subscribe("+/moonraker/status")
        for srv in servers:
            srv.wait_klippy_state("ready", 90)
        online = set()
        deadline = time.monotonic() + 30
        while online != {"farm0", "farm1", "farm2"} and time.monotonic() < deadline:
            for topic, payload, _r in client.drain():
                inst = topic.split("/")[0]
                if (topic.endswith("/moonraker/status") and payload == {"server": "online"}
                        and inst.startswith("farm")):   # other tests' instances are retained
                    online.add(inst)
            time.sleep(0.1)
        assert online == {"farm0", "farm1", "farm2"}
        for i, srv in enumerate(servers):
            srv.post("/printer/gcode/script", params={"script": f"G28 X\nG1 X{10 + i} F6000"},
                     timeout=60)
        seen = {}
        deadline = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < deadline:
            for topic, payload, _r in client.drain():
                inst = topic.split("/")[0]
                if topic.endswith("/klipper/status") and inst.startswith("farm"):
                    pos = payload["status"].get("toolhead", {}).get("position")
                    if pos and pos[0] == 10 + int(inst[-1]):
                        seen[inst] = pos[0]
            time.sleep(0.1)
        assert seen == {"farm0": 10, "farm1": 11, "farm2": 12}
        servers[1].kill()
        payload, _, _ = client.wait("farm1/moonraker/status", 120)
        assert payload == {"server": "offline"}
        # the others are still served
        api = Api(client, "farm2")
        assert api.request("server.info")["result"]["klippy_state"] == "ready"
    finally:
        for srv in servers:
            srv.stop()
        for p in printers:
            p.stop()
