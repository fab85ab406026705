"""Issue 2: moonraker.conf parsing — includes, secrets, warnings, server.config."""
from __future__ import annotations

import os

import pytest

from moonflask.config import ConfigError, ConfigFile


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def test_includes_secrets_and_warnings(tmp_path):
    conf = tmp_path / "moonraker.conf"
    _write(str(tmp_path / "include" / "a.conf"), "[data_store]\ngcode_store_size: 50\n")
    _write(str(tmp_path / "include" / "b.conf"), "[fake_section]\nx: 1\n")
    _write(str(tmp_path / "secrets.ini"), "[store]\nsize: 300\n")
    _write(str(conf), "[server]\nport: 7200\nbogus_option: 1\n"
           "[secrets]\nsecrets_path: secrets.ini\n"
           "[include include/*.conf]\n"
           "[data_store]\ntemperature_store_size: {secrets.store.size}\n")
    cfg = ConfigFile(str(conf))
    srv = cfg.section("server")
    assert srv.getint("port", 7125) == 7200
    assert srv.get("host", "0.0.0.0") == "0.0.0.0"
    cfg.section("secrets").get("secrets_path", None)
    ds = cfg.section("data_store")
    assert ds.getint("temperature_store_size", 1200) == 300
    assert ds.getint("gcode_store_size", 1000) == 50
    assert cfg.parsed["server"] == {"port": 7200, "host": "0.0.0.0"}
    assert [f["filename"] for f in cfg.files] == ["moonraker.conf", "include/a.conf",
                                                  "include/b.conf"]
    assert cfg.files[0]["sections"] == ["server", "secrets", "data_store"]
    assert cfg.orig()["data_store"] == {"temperature_store_size": "{secrets.store.size}",
                                        "gcode_store_size": "50"}
    warnings = cfg.warnings()
    assert any("'bogus_option' detected in section [server]" in w for w in warnings)
    assert any("Unparsed config section [fake_section]" in w for w in warnings)


@pytest.mark.parametrize("text,option,getter,message", [
    ("[server]\nport: abc\n", "port", "getint", "Error parsing option 'port'"),
    ("[server]\nport: 70000\n", "port", "getint", "above the maximum"),
    ("[server]\nflag: maybe\n", "flag", "getboolean", "not a boolean"),
    ("[server]\nx: {secrets.nope.key}\n", "x", "get", "Unknown secret"),
])
def test_bad_values_are_clear_errors(tmp_path, text, option, getter, message):
    conf = tmp_path / "moonraker.conf"
    _write(str(conf), text)
    section = ConfigFile(str(conf)).section("server")
    kwargs = {"maxval": 65535} if option == "port" else {}
    with pytest.raises(ConfigError) as err:
        getattr(section, getter)(option, **kwargs)
    assert message in str(err.value)


def test_unparsable_file_and_missing_include(tmp_path):
    conf = tmp_path / "moonraker.conf"
    _write(str(conf), "no section header\n")
    with pytest.raises(ConfigError):
        ConfigFile(str(conf))
    _write(str(conf), "[include missing.conf]\n")
    with pytest.raises(ConfigError):
        ConfigFile(str(conf))


def test_server_reports_config_and_warnings(start_server, tmp_root):
    data = os.path.join(tmp_root, "cfgsrv")
    _write(os.path.join(data, "config", "extra", "x.conf"), "[data_store]\ngcode_store_size: 5\n")
    srv = start_server(config="[include extra/*.conf]\n[fake_section]\n",
                       server_options="bogus_option: 1", data_path=data)
    info = srv.result("GET", "/server/info")
    assert any("fake_section" in w for w in info["warnings"])
    assert any("bogus_option" in w for w in info["warnings"])
    cfg = srv.result("GET", "/server/config")
    assert cfg["config"]["data_store"]["gcode_store_size"] == 5
    assert {"filename": "extra/x.conf", "sections": ["data_store"]} in cfg["files"]
    assert cfg["orig"]["server"]["bogus_option"] == "1"
    # The store size applies: only the last 5 entries are kept.
    for i in range(8):
        srv.result("POST", "/printer/gcode/script", json={"script": f"M118 n{i}"})
    store = srv.result("GET", "/server/gcode_store")["gcode_store"]
    assert len(store) == 5 and store[-1]["message"] == "// n7"


def test_bad_config_refuses_to_start(tmp_root, printer):
    from helpers import Moonflask
    srv = Moonflask(os.path.join(tmp_root, "badcfg"), printer.socket_path,
                    server_options="max_websocket_connections: lots")
    with pytest.raises(RuntimeError) as err:
        srv.start()
    assert "max_websocket_connections" in str(err.value)


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")


def test_full_example_config_is_what_moonflask_reads(start_server):
    """config/moonraker-full.conf names only options moonflask reads: started
    with it (its [server] replaced by the test's), no warning, no failed
    component, and every section it enables is loaded."""
    with open(os.path.join(EXAMPLES, "moonraker-full.conf")) as fh:
        text = fh.read()
    rest = text[text.index("#[include"):]           # everything after [server]
    srv = start_server(config=rest)
    info = srv.result("GET", "/server/info")
    # warnings about this machine (no D-Bus, the simulated Klippy's missing
    # config_examples/docs folders) are not about the file
    about_file = [w for w in info["warnings"]
                  if ("config option" in w or "config section" in w or w.startswith("["))
                  and "DBus Connection Not available" not in w]
    assert about_file == [] and info["failed_components"] == []
    assert {"history", "file_manager", "machine", "job_queue", "announcements",
            "data_store", "authorization"} <= set(info["components"])
    cfg = srv.result("GET", "/server/config")["config"]
    assert cfg["data_store"] == {"temperature_store_size": 1200, "gcode_store_size": 1000}


def test_server_config_lists_sections_in_force_as_reference(start_server, tmp_root):
    """Issue 10 item 4: on the minimal configuration (only [server] and
    [authorization] written), server.config lists every section in force
    with its options' defaults, as the reference does
    (tests/reference/config_server_config_minimal.json)."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from shapes import reference
    ref = reference("config_server_config_minimal")["body"]["result"]
    srv = start_server(data_path=os.path.join(tmp_root, "config_minimal"))
    got = srv.result("GET", "/server/config")
    components = srv.result("GET", "/server/info")["components"]
    # per-instance values, and one deliberate difference: moonflask trusts
    # X-Forwarded-For only when asked to (use_xheaders: True)
    instance = {("server", "port"), ("server", "klippy_uds_address"),
                ("server", "use_xheaders")}
    expected = [name for name in ref["config"]
                if name != "history" or "history" in components]
    assert list(got["config"]) == expected
    for name in expected:
        ours, theirs = got["config"][name], ref["config"][name]
        assert set(ours) == set(theirs), name
        for option, value in theirs.items():
            if (name, option) not in instance:
                assert ours[option] == value, (name, option)
    assert got["config"]["server"]["use_xheaders"] is False
    assert list(got["orig"]) == list(ref["orig"]) == ["DEFAULT", "server", "authorization"]
    assert got["files"] == ref["files"]
    assert not [w for w in srv.result("GET", "/server/info")["warnings"] if "Unparsed" in w
                or "Invalid config option" in w]
    srv.stop()


def test_make_run_writes_the_minimal_example(tmp_path):
    from moonflask.config import write_default_config
    dest = tmp_path / "config" / "moonraker.conf"
    write_default_config(str(dest), "/run/klippy.sock")
    cfg = ConfigFile(str(dest))
    assert cfg.section("server").get("klippy_uds_address") == "/run/klippy.sock"
    assert cfg.section("authorization").getlist("trusted_clients")[0] == "127.0.0.0/8"
    with open(os.path.join(EXAMPLES, "moonraker.conf")) as fh:
        example = fh.read()
    assert dest.read_text() == example.replace("~/printer_data/comms/klippy.sock",
                                               "/run/klippy.sock")
