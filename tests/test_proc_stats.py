"""machine.proc_stats and notify_proc_stat_update, sampled for 5 s, compared
with the reference's shapes and with what /proc reports."""
from __future__ import annotations

import os
import time

import pytest

from test_machine import assert_same_shape, ref


@pytest.fixture(scope="module")
def mf(start_server):
    return start_server()


def test_notifications_for_5_seconds(mf):
    ws = mf.ws()
    ws2 = mf.ws()
    t0 = time.monotonic()
    notes = []
    while time.monotonic() - t0 < 5.2:
        notes.append(ws.wait_notification("notify_proc_stat_update", timeout=3))
    assert 4 <= len(notes) <= 7
    theirs = ref("machine_dbus_notify_proc_stat_update")["body"]
    for note in notes:
        assert_same_shape(note, theirs)
        params = note["params"][0]
        assert params["websocket_connections"] == 2
        stats = params["moonraker_stats"]
        assert 0 <= stats["cpu_usage"] < 100 and stats["mem_units"] == "kB"
        assert 5_000 < stats["memory"] < 2_000_000
        assert set(params["network"]) == {
            line.split(":")[0].strip()
            for line in open("/proc/net/dev").read().splitlines()[2:] if ":" in line}
        ncpu = os.cpu_count()
        assert set(params["system_cpu_usage"]) == {"cpu", *(f"cpu{i}" for i in range(ncpu))}
        assert all(0 <= v <= 100 for v in params["system_cpu_usage"].values())
        mem = params["system_memory"]
        assert mem["total"] == mem["available"] + mem["used"]
    times = [n["params"][0]["moonraker_stats"]["time"] for n in notes]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.8 < g < 1.3 for g in gaps), gaps
    ws2.close()


def test_proc_stats_request(mf):
    res = mf.result("GET", "/machine/proc_stats")
    theirs = ref("machine_dbus_http_proc_stats")["body"]["result"]
    assert_same_shape(res, theirs)
    assert 5 <= len(res["moonraker_stats"]) <= 30
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    assert abs(res["system_uptime"] - uptime) < 5
    thermal = "/sys/class/thermal/thermal_zone0/temp"
    if os.path.exists(thermal):
        assert isinstance(res["cpu_temp"], float)
    else:
        assert res["cpu_temp"] is None
    # no vcgencmd on a non-Pi host: throttled_state is null
    import shutil
    if not shutil.which("vcgencmd"):
        assert res["throttled_state"] is None
    # our own memory: the RSS of the server process
    with open(f"/proc/{mf.proc.pid}/status") as fh:
        rss = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:"))
    assert abs(res["moonraker_stats"][-1]["memory"] - rss) < rss * 0.2
    rpc = mf.ws().call("machine.proc_stats")
    assert_same_shape(rpc, ref("machine_dbus_rpc_proc_stats")["body"]["result"])


def test_sampler_is_cheap(mf):
    """The idle server (sampler + notifications to one client) stays well
    under 1 % of a core over 5 s."""
    ws = mf.ws()
    ws.wait_notification("notify_proc_stat_update", timeout=3)

    def cpu_seconds() -> float:
        with open(f"/proc/{mf.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    c0, t0 = cpu_seconds(), time.monotonic()
    time.sleep(5)
    pct = (cpu_seconds() - c0) / (time.monotonic() - t0) * 100
    assert pct < 1.0, pct


def test_throttled_flags():
    from moonflask.components.proc_stats import parse_throttled
    assert parse_throttled(0) == {"bits": 0, "flags": []}
    assert parse_throttled(0x50005) == {"bits": 0x50005, "flags": [
        "Under-Voltage Detected", "Currently Throttled",
        "Previously Under-Volted", "Previously Throttled"]}


def test_cpu_throttled_with_a_fake_vcgencmd(start_server, printer_data, tmp_root):
    """vcgencmd is the Raspberry Pi firmware's interface (hardware): a small
    stand-in script reports the bits written to a file."""
    bindir = os.path.join(tmp_root, "fakebin")
    os.makedirs(bindir, exist_ok=True)
    bits_file = os.path.join(bindir, "bits")
    with open(bits_file, "w") as fh:
        fh.write("0x0")
    script = os.path.join(bindir, "vcgencmd")
    with open(script, "w") as fh:
        fh.write(f"#!/bin/sh\necho \"throttled=$(cat {bits_file})\"\n")
    os.chmod(script, 0o755)
    data = os.path.join(printer_data, "pi")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    old = os.environ["PATH"]
    os.environ["PATH"] = bindir + os.pathsep + old
    try:
        srv = start_server(data_path=data)
    finally:
        os.environ["PATH"] = old
    ws = srv.ws()
    deadline = time.monotonic() + 10
    while srv.result("GET", "/machine/proc_stats")["throttled_state"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert srv.result("GET", "/machine/proc_stats")["throttled_state"] == {"bits": 0, "flags": []}
    with open(bits_file, "w") as fh:
        fh.write("0x50000")
    note = ws.wait_notification("notify_cpu_throttled", timeout=12)
    assert note["params"] == [{"bits": 0x50000, "flags": [
        "Previously Under-Volted", "Previously Throttled"]}]
