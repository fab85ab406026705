"""Issue 14: ``[power NAME]`` devices.

Network devices are small real servers on 127.0.0.1 (tests/fake_devices.py)
speaking each device's protocol; the klipper_device is the simulated
printer's ``[output_pin BEEPER_pin]``; uhubctl is an executable on PATH
printing uhubctl's output format.  Responses are compared with the
reference Moonraker 0.11.0 (scripts/capture_power.py).
"""
from __future__ import annotations

import base64
import json
import os
import socket
import stat
import sys
import threading
import time

import pytest

import fake_devices as fd
from helpers import free_port
from shapes import reference, shape_diff

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402

UHUBCTL = r"""#!/bin/sh
# uhubctl stand-in: hub 1-1, port 2's state kept in $UHUBCTL_STATE
state="$UHUBCTL_STATE"
[ -f "$state" ] || echo off > "$state"
action=""
while [ $# -gt 0 ]; do
  case "$1" in -a) action="$2"; shift;; esac
  shift
done
show() {
  echo "$1 for hub 1-1 [0424:2514, USB 2.00, 4 ports, ppps]"
  if [ "$(cat "$state")" = on ]; then echo "  Port 2: 0100 power"
  else echo "  Port 2: 0000 off"; fi
}
show "Current status"
if [ -n "$action" ]; then
  echo "$action" > "$state"
  echo "Sent power $action request"
  show "New status"
fi
echo "Current status for hub 1 [1d6b:0002 Linux 6.6 dwc_otg_hcd DWC OTG, USB 2.00, 1 ports, ppps]"
echo "  Port 1: 0503 power highspeed enable connect [0424:2514, USB 2.00, 4 ports, ppps]"
"""


@pytest.fixture(scope="module")
def devices():
    devs = {"tasmota": fd.Tasmota(password="pw"), "shelly1": fd.Shelly(1),
            "shelly2": fd.Shelly(2), "ha": fd.HomeAssistant("tok", "switch.printer"),
            "hue": fd.Hue("hueuser", "3"), "huegroup": fd.Hue("hueuser", "7"),
            "homeseer": fd.Homeseer(), "loxone": fd.Loxone(),
            "smartthings": fd.SmartThings("sttok", "dev-1"), "tplink": fd.TPLink(),
            "strip": fd.TPLink(children=2), "http": fd.GenericHttp(),
            "queued": fd.Tasmota(), "shutdown": fd.Tasmota(), "timed": fd.Tasmota(),
            "actions": fd.Tasmota(), "restricted": fd.Tasmota()}
    yield devs
    for dev in devs.values():
        dev.stop()


@pytest.fixture(scope="module")
def silent_port():
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module")
def uhubctl(printer_data):
    bindir = os.path.join(printer_data, "bin")
    os.makedirs(bindir, exist_ok=True)
    path = os.path.join(bindir, "uhubctl")
    with open(path, "w") as fh:
        fh.write(UHUBCTL)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    state = os.path.join(printer_data, "uhubctl.state")
    old_path = os.environ["PATH"]
    os.environ["PATH"] = bindir + os.pathsep + old_path
    os.environ["UHUBCTL_STATE"] = state
    yield state
    os.environ["PATH"] = old_path
    del os.environ["UHUBCTL_STATE"]


def hp(dev) -> str:
    return f"address: 127.0.0.1\nport: {dev.port}"


def config(d: dict, dead_port: int, silent_port: int) -> str:
    return f"""[power beeper]
type: klipper_device
object_name: output_pin BEEPER_pin
locked_while_printing: True

[power flare]
type: klipper_device
object_name: gcode_macro SET_FLARE

[power tasmota]
type: tasmota
{hp(d['tasmota'])}
password: pw
poll_interval: 1.0

[power shelly1]
type: shelly
{hp(d['shelly1'])}

[power shelly2]
type: shelly
{hp(d['shelly2'])}

[power ha]
type: homeassistant
{hp(d['ha'])}
device: switch.printer
token: tok
status_delay: 0.05

[power hue]
type: hue
{hp(d['hue'])}
user: hueuser
device_id: 3

[power huegroup]
type: hue
{hp(d['huegroup'])}
user: hueuser
device_id: 7
device_type: group

[power homeseer]
type: homeseer
{hp(d['homeseer'])}
device: 42

[power loxone]
type: loxonev1
{hp(d['loxone'])}
output_id: printer

[power smartthings]
type: smartthings
{hp(d['smartthings'])}
protocol: http
token: sttok
device: dev-1

[power tplink]
type: tplink_smartplug
{hp(d['tplink'])}
poll_interval: 1.0

[power strip]
type: tplink_smartplug
{hp(d['strip'])}
output_id: 1

[power http]
type: http
on_url: {d['http'].url}/set
off_url: {d['http'].url}/set
status_url: {d['http'].url}/status
user: admin
password: pw
request_template:
  {{% if command in ["on", "off"] %}}
    {{% do http_request.set_method("POST") %}}
    {{% do http_request.add_header("X-Key", "sesame") %}}
    {{% do http_request.set_body({{"power": command.upper()}}) %}}
  {{% endif %}}
  {{% do http_request.send() %}}
response_template:
  {{% set resp = http_request.last_response().json() %}}
  {{resp["power"]}}

[power usb]
type: uhubctl
location: 1-1
port: 2

[power dead]
type: tasmota
address: 127.0.0.1
port: {dead_port}

[power silent]
type: tplink_smartplug
address: 127.0.0.1
port: {silent_port}
"""


NETWORK = ("tasmota", "shelly1", "shelly2", "ha", "hue", "huegroup", "homeseer", "loxone",
           "smartthings", "tplink", "strip", "http")


MACROS = """
[gcode_macro POWER_ON_TASMOTA]
gcode:
  {action_call_remote_method("set_device_power", device="tasmota", state="on")}

[gcode_macro SET_FLARE]
variable_value: 0
gcode:
  {% if 'VALUE' not in params %}
    {action_raise_error("Parameter 'VALUE' missing from 'SET_FLARE'")}
  {% endif %}
  SET_GCODE_VARIABLE MACRO=SET_FLARE VARIABLE=value VALUE={params.VALUE|int}

[gcode_macro POWER_ON_NOTHING]
gcode:
  {action_call_remote_method("set_device_power", device="nothing", state="on")}

[gcode_macro POWER_BEEPER_FORCED]
gcode:
  {action_call_remote_method("set_device_power", device="beeper", state="toggle",
                             force=True)}
"""


@pytest.fixture(scope="module")
def srv(start_server, devices, uhubctl, silent_port, printer, printer_data):
    write_long_gcode(os.path.join(printer_data, "gcodes", "long.gcode"), 6)
    # macros calling set_device_power, as configuration.md shows them
    with open(os.path.join(printer.workdir, "printer.cfg"), "a") as fh:
        fh.write(MACROS)
    server = start_server(config=config(devices, free_port(), silent_port))
    server.post("/printer/restart")
    time.sleep(0.5)
    server.wait_klippy_state("ready", timeout=30)
    return server


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def states(srv) -> dict:
    return {d["device"]: d["status"] for d in
            srv.result("GET", "/machine/device_power/devices")["devices"]}


def test_device_list(srv):
    got = srv.get("/machine/device_power/devices").json()
    ref = reference("power_http_devices")["body"]
    ours = {d["device"]: d for d in got["result"]["devices"]}
    refs = {d["device"]: d for d in ref["result"]["devices"]}
    assert shape_diff(refs["beeper"], ours["beeper"]) == []
    assert shape_diff(refs["tasmota"], ours["tasmota"]) == []
    assert list(ours)[:3] == ["beeper", "flare", "tasmota"]
    assert ours["beeper"] == {"device": "beeper", "status": "off",
                              "locked_while_printing": True, "type": "klipper_device",
                              "is_shutdown": False}
    assert ours["loxone"]["type"] == "loxonev1" and ours["usb"]["type"] == "uhubctl"
    assert ws_devices(srv) == got["result"]
    # every reachable device reaches a known state; the dead one is in error
    wait_for(lambda: all(s in ("on", "off") for n, s in states(srv).items()
                         if n not in ("dead", "silent")),
             what=f"devices initialised: {states(srv)}")
    wait_for(lambda: states(srv)["dead"] == "error", what="dead device in error")


def ws_devices(srv):
    ws = srv.ws()
    return ws.call("machine.device_power.devices")


@pytest.mark.parametrize("name", NETWORK + ("usb",))
def test_network_device_on_off(srv, devices, uhubctl, name):
    ws = srv.ws()
    res = srv.post(f"/machine/device_power/device?device={name}&action=on").json()
    ref = reference("power_http_post_device_on")["body"]
    assert shape_diff({"result": {name: ref["result"]["tasmota"]}}, res) == []
    assert res["result"] == {name: "on"}
    if name == "usb":
        assert open(uhubctl).read().strip() == "on"
    elif name == "strip":
        assert devices[name].child_on == [False, True]
    else:
        assert devices[name].on is True
    note = ws.wait_notification("notify_power_changed",
                                predicate=lambda m: m["params"][0]["device"] == name)
    assert shape_diff(reference("power_http_post_device_on")["notifications"][0], note) == []
    assert note["params"][0]["status"] == "on"
    res = ws.call("machine.device_power.post_device", {"device": name, "action": "off"})
    assert res == {name: "off"}
    if name == "usb":
        assert open(uhubctl).read().strip() == "off"
    elif name == "strip":
        assert devices[name].child_on == [False, False]
    else:
        assert devices[name].on is False
    assert ws.call("machine.device_power.get_device", {"device": name}) == {name: "off"}
    assert ws.call("machine.device_power.post_device",
                   {"device": name, "action": "toggle"}) == {name: "on"}
    assert srv.result("POST", f"/machine/device_power/device?device={name}&action=toggle") \
        == {name: "off"}


def test_gcode_macro_device(srv):
    """A gcode_macro klipper_device (configuration.md "Gcode Macro Restrictions")."""
    assert "power" in srv.result("GET", "/server/info")["components"]
    wait_for(lambda: states(srv)["flare"] == "off", what="flare known")
    assert srv.result("POST", "/machine/device_power/device?device=flare&action=on") == {
        "flare": "on"}
    got = srv.result("GET", "/printer/objects/query?gcode_macro%20SET_FLARE=value")
    assert got["status"]["gcode_macro SET_FLARE"]["value"] == 1
    # the macro changed from Klipper's side is reported
    srv.post("/printer/gcode/script?script=SET_FLARE VALUE=0")
    wait_for(lambda: states(srv)["flare"] == "off", what="flare off from Klipper")


def test_wire_protocols(srv, devices):
    """The requests match what the reference sends to the same devices."""
    ref = reference("power_device_requests")
    tas = [r["path"] for r in devices["tasmota"].requests]
    assert "/cm?user=admin&password=pw&cmnd=Power1+on" in tas
    assert ref["tasmota"][0]["path"] in [p.replace("password=pw", "password=") for p in tas]
    assert "GET /relay/0?turn=on" in devices["shelly1"].paths()
    assert "GET /rpc/Switch.Set?id=0&on=true" in devices["shelly2"].paths()
    for name, key in [("ha", "homeassistant"), ("hue", "hue"), ("homeseer", "homeseer"),
                      ("loxone", "loxone"), ("smartthings", "smartthings")]:
        ours = {(r["method"], r["path"], r["body"].replace(" ", "")) for r in
                devices[name].requests}
        for r in ref[key]:
            assert (r["method"], r["path"], r["body"]) in ours, (name, r)
    assert devices["ha"].requests[0]["headers"]["Authorization"] == "Bearer tok"
    assert {"system": {"set_relay_state": {"state": 1}}} in devices["tplink"].requests
    assert {"context": {"child_ids": [devices["strip"].device_id + "01"]},
            "system": {"set_relay_state": {"state": 1}}} in devices["strip"].requests
    assert "PUT /api/hueuser/groups/7/action" in devices["huegroup"].paths()
    # the generic http device: templated POST with a header, basic credentials
    creds = "Basic " + base64.b64encode(b"admin:pw").decode()
    sets = [r for r in devices["http"].requests if r["path"] == "/set"]
    assert sets and all(r["headers"]["Authorization"] == creds and
                        r["headers"]["X-Key"] == "sesame" for r in sets)
    assert {json.loads(r["body"])["power"] for r in sets} == {"ON", "OFF"}


def test_errors(srv):
    for fixture, method, path in [
            ("power_http_get_device_unknown", "GET", "/machine/device_power/device?device=nope"),
            ("power_http_get_device_missing", "GET", "/machine/device_power/device"),
            ("power_http_post_device_bad_action", "POST",
             "/machine/device_power/device?device=tasmota&action=blink"),
            ("power_http_post_device_no_action", "POST",
             "/machine/device_power/device?device=tasmota"),
            ("power_http_post_device_unknown", "POST",
             "/machine/device_power/device?device=nope&action=on"),
            ("power_http_status_none", "GET", "/machine/device_power/status"),
            ("power_http_on_none", "POST", "/machine/device_power/on")]:
        ref = reference(fixture)
        resp = srv.get(path) if method == "GET" else srv.post(path)
        assert (resp.status_code, resp.json()["error"]["message"]) == (
            ref["status"], ref["body"]["error"]["message"]), fixture
    before = states(srv)["tasmota"]
    srv.post("/machine/device_power/device?device=tasmota&action=blink")
    assert states(srv)["tasmota"] == before


def test_unreachable_device(srv):
    t0 = time.monotonic()
    resp = srv.post("/machine/device_power/device?device=dead&action=on")
    assert resp.status_code == 400
    msg = resp.json()["error"]["message"]
    assert msg.startswith("Error Setting Device Status: dead to on")
    assert "connection refused" in msg and "127.0.0.1" in msg
    assert time.monotonic() - t0 < 6
    assert srv.result("GET", "/machine/device_power/device?device=dead") == {"dead": "error"}
    # the others still answer while it is retried
    assert srv.result("GET", "/machine/device_power/status?tasmota&dead&nope") == {
        "tasmota": states(srv)["tasmota"], "dead": "error", "nope": "device_not_found"}


def test_unresponsive_device(srv):
    """A device that accepts the connection and never answers: the request
    times out with a clear error while the server keeps answering."""
    result = {}

    def switch():
        result["resp"] = srv.post("/machine/device_power/device?device=silent&action=on",
                                  timeout=30)
    t0 = time.monotonic()
    thread = threading.Thread(target=switch)
    thread.start()
    time.sleep(0.3)
    assert srv.get("/server/info", timeout=2).status_code == 200   # nothing blocks
    assert srv.result("GET", "/machine/device_power/device?device=tasmota")
    thread.join(30)
    elapsed = time.monotonic() - t0
    resp = result["resp"]
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        f"Error Setting Device Status: silent to on: request to 127.0.0.1:"
        f"{srv_silent_port(srv)} timed out after 5 s")
    assert 4.5 < elapsed < 12
    assert states(srv)["silent"] == "error"


def srv_silent_port(srv) -> int:
    cfg = srv.result("GET", "/server/config")["config"]["power silent"]
    return cfg["port"]


def test_batch(srv, devices):
    ws = srv.ws()
    res = srv.post("/machine/device_power/on?beeper&tasmota&nope").json()
    assert shape_diff(reference("power_http_on")["body"], res, free=("$.result",)) == []
    assert res["result"] == {"beeper": "on", "tasmota": "on", "nope": "device_not_found"}
    assert devices["tasmota"].on is True
    got = ws.call("printer.objects.query", {"objects": {"output_pin BEEPER_pin": ["value"]}})
    assert got["status"]["output_pin BEEPER_pin"]["value"] > 0
    res = ws.call("machine.device_power.status", {"beeper": None, "tasmota": None})
    assert res == {"beeper": "on", "tasmota": "on"}
    assert ws.call("machine.device_power.off", {"beeper": None, "tasmota": None}) == {
        "beeper": "off", "tasmota": "off"}
    got = ws.call("printer.objects.query", {"objects": {"output_pin BEEPER_pin": ["value"]}})
    assert got["status"]["output_pin BEEPER_pin"]["value"] == 0


def test_external_changes(srv, devices):
    """A plug switched by hand (polled) and a pin set from Klipper's side."""
    ws = srv.ws()
    devices["tasmota"].on = True
    note = ws.wait_notification("notify_power_changed", timeout=20,
                                predicate=lambda m: m["params"][0]["device"] == "tasmota")
    assert note["params"][0]["status"] == "on"
    devices["tplink"].on = True
    ws.wait_notification("notify_power_changed", timeout=20,
                         predicate=lambda m: m["params"][0]["device"] == "tplink")
    assert srv.result("GET", "/machine/device_power/device?device=tplink") == {"tplink": "on"}
    srv.post("/printer/gcode/script?script=SET_PIN PIN=BEEPER_pin VALUE=1")
    note = ws.wait_notification("notify_power_changed", timeout=20,
                                predicate=lambda m: m["params"][0]["device"] == "beeper")
    ref = [n for n in reference("power_notify_external_klipper")["notifications"]
           if n["params"][0]["device"] == "beeper"][0]
    assert shape_diff(ref, note) == []
    assert note["params"][0]["status"] == "on"
    ws.call("printer.gcode.script", {"script": "SET_PIN PIN=BEEPER_pin VALUE=0"})
    wait_for(lambda: states(srv)["beeper"] == "off", what="beeper off")


def test_set_device_power_remote_method(srv, devices):
    devices["tasmota"].on = False
    wait_for(lambda: states(srv)["tasmota"] == "off", what="tasmota off")
    srv.post("/printer/gcode/script?script=POWER_ON_TASMOTA")
    wait_for(lambda: devices["tasmota"].on, what="remote method switched tasmota on")
    wait_for(lambda: states(srv)["tasmota"] == "on", what="tasmota reported on")
    # a failing call is reported on Klipper's console
    ws = srv.ws()
    srv.post("/printer/gcode/script?script=POWER_ON_NOTHING")
    note = ws.wait_notification("notify_gcode_response", timeout=10,
                                predicate=lambda m: "set_device_power" in m["params"][0])
    assert "No valid device named nothing" in note["params"][0]


def test_locked_while_printing(srv):
    ws = srv.ws()
    ws.call("printer.print.start", {"filename": "long.gcode"})
    wait_for(lambda: ws.call("printer.objects.query", {"objects": {"print_stats": ["state"]}})
             ["status"]["print_stats"]["state"] == "printing", what="printing")
    try:
        ref = reference("power_http_post_locked_plug")
        resp = srv.post("/machine/device_power/device?device=beeper&action=on")
        assert (resp.status_code, resp.json()["error"]["message"]) == (
            ref["status"], ref["body"]["error"]["message"].replace("lockedplug", "beeper"))
        assert states(srv)["beeper"] == "off"
        # a batch naming a locked device changes nothing (as the reference)
        http_before = states(srv)["http"]
        resp = srv.post("/machine/device_power/on?http&beeper")
        assert resp.status_code == reference("power_http_on_locked")["status"] == 400
        assert states(srv)["http"] == http_before and states(srv)["beeper"] == "off"
        # set_device_power with force=True passes the lock
        srv.post("/printer/gcode/script?script=POWER_BEEPER_FORCED")
        wait_for(lambda: states(srv)["beeper"] == "on", what="forced toggle")
        # a device that is not locked still switches
        assert srv.result("POST", "/machine/device_power/device?device=http&action=on") == {
            "http": "on"}
    finally:
        ws.call("printer.print.cancel")
    wait_for(lambda: ws.call("printer.objects.query", {"objects": {"print_stats": ["state"]}})
             ["status"]["print_stats"]["state"] not in ("printing", "paused"), timeout=30,
             what="print cancelled")
    assert srv.result("POST", "/machine/device_power/device?device=beeper&action=off") == {
        "beeper": "off"}


SHUTDOWN_CONFIG = """[job_queue]
load_on_startup: False

[power shutdown]
type: tasmota
address: 127.0.0.1
port: {shutdown}
off_when_shutdown: True
off_when_shutdown_delay: 0.2
restart_klipper_when_powered: True
restart_delay: 0.5

[power queued]
type: tasmota
address: 127.0.0.1
port: {queued}
on_when_job_queued: True
initial_state: off

[power timed]
type: tasmota
address: 127.0.0.1
port: {timed}
timer: 1

[power actions]
type: tasmota
address: 127.0.0.1
port: {actions}
poll_interval: 1
timer: 1
restrict_action_processing: False

[power restricted]
type: tasmota
address: 127.0.0.1
port: {restricted}
poll_interval: 1
timer: 1
"""


def test_bad_config(start_server, printer_data, tmp_root):
    for text, words in [("[power x]\ntype: lava_lamp\n", "unsupported power device type"),
                        ("[power x]\ntype: klipper_device\nobject_name: fan\n",
                         "object_name must be"),
                        ("[power x]\ntype: klipper_device\nobject_name: output_pin p\n"
                         "off_when_shutdown: True\n", "not available for klipper_device"),
                        ("[power x]\ntype: tasmota\n", "No option 'address'"),
                        ("[power x]\ntype: mqtt\ncommand_topic: a\n",
                         "needs the [mqtt] section"),
                        ("[power x]\ntype: gpio\npin: gpio-26\n", "invalid gpio pin"),
                        # no gpio chip here (no gpio-sim in this container): the line
                        # itself is not tested, its absence is reported
                        ("[power x]\ntype: gpio\npin: !gpiochip9/gpio26\n",
                         "no gpio chip /dev/gpiochip9"),
                        ("[power x]\ntype: rf\npin: gpiochip9/gpio2\non_code: 10\n"
                         "off_code: 01\n", "no gpio chip /dev/gpiochip9"),
                        # the codes are checked before the line is requested, so
                        # their errors are reported with or without a chip
                        ("[power x]\ntype: rf\npin: gpiochip9/gpio2\non_code: 10x\n"
                         "off_code: 01\n", "RF codes must be binary, not '10x'"),
                        ("[power x]\ntype: rf\npin: gpiochip9/gpio2\non_code: 10\n",
                         "No option 'off_code'")]:
        data = os.path.join(tmp_root, "badpower")
        os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
        srv = start_server(config=text, data_path=data)
        info = srv.result("GET", "/server/info")
        assert "power" in info["failed_components"]
        assert any(words in w for w in info["warnings"]), info["warnings"]
        assert srv.get("/machine/device_power/devices").status_code == 404
        srv.stop()


def test_shutdown_restart_and_job_queue(start_server, devices, printer_data, tmp_root):
    data = os.path.join(tmp_root, "powershut")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    write_long_gcode(os.path.join(data, "gcodes", "q.gcode"), 1)
    devices["queued"].on = True
    srv = start_server(config=SHUTDOWN_CONFIG.format(shutdown=devices["shutdown"].port,
                                                     queued=devices["queued"].port,
                                                     timed=devices["timed"].port,
                                                     actions=devices["actions"].port,
                                                     restricted=devices["restricted"].port),
                       data_path=data)
    ws = srv.ws()
    # initial_state: off was applied
    wait_for(lambda: states(srv)["queued"] == "off", what="initial_state off")
    assert devices["queued"].on is False
    # on_when_job_queued
    srv.post("/server/job_queue/job?filenames=q.gcode")
    wait_for(lambda: devices["queued"].on, what="on_when_job_queued")
    wait_for(lambda: states(srv)["queued"] == "on", what="queued reported on")
    # timer: the device turns itself off again
    assert srv.result("POST", "/machine/device_power/device?device=timed&action=on") == {
        "timed": "on"}
    wait_for(lambda: states(srv)["timed"] == "off", timeout=10, what="timer off")
    assert devices["timed"].on is False
    # switched on by hand: with restrict_action_processing False the timer runs
    wait_for(lambda: states(srv)["actions"] == "off" and states(srv)["restricted"] == "off",
             what="polled devices known")
    devices["actions"].on = devices["restricted"].on = True
    wait_for(lambda: states(srv)["actions"] == "on" and states(srv)["restricted"] == "on",
             what="external change seen")
    wait_for(lambda: devices["actions"].on is False, timeout=10, what="timer on external on")
    time.sleep(1.5)   # the restricted device's timer would have fired by now
    assert devices["restricted"].on is True and states(srv)["restricted"] == "on"
    # off_when_shutdown follows a real Klippy shutdown
    assert srv.result("POST", "/machine/device_power/device?device=shutdown&action=on") == {
        "shutdown": "on"}
    srv.post("/printer/emergency_stop")
    srv.wait_klippy_state("shutdown")
    ws.wait_notification("notify_power_changed", timeout=20,
                         predicate=lambda m: m["params"][0] == {
                             "device": "shutdown", "status": "off",
                             "locked_while_printing": False, "type": "tasmota"})
    assert devices["shutdown"].on is False
    # restart_klipper_when_powered: powering on brings Klippy back (FIRMWARE_RESTART)
    assert srv.result("POST", "/machine/device_power/device?device=shutdown&action=on") == {
        "shutdown": "on"}
    srv.wait_klippy_state("ready", timeout=30)
    # Klippy already ready: no restart is sent
    srv.post("/machine/device_power/device?device=shutdown&action=off")
    srv.post("/machine/device_power/device?device=shutdown&action=on")
    time.sleep(1.0)
    assert srv.result("GET", "/server/info")["klippy_state"] == "ready"
