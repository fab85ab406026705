"""Issue 10 item 13: switching from Moonraker keeps what it wrote.

scripts/capture_switch_reference.py ran the real Moonraker 0.11.0 on a
``printer_data`` with the simulated printer, changed its state through its
API (two webcams, Mainsail and Fluidd settings, a user, a new API key, a
login, a queued job, a printed job, a dismissed announcement, an added feed),
recorded what its API then returned (tests/reference/switch_state_*.json) and
kept its database (tests/data/switch_reference/moonraker-sql.db).  Here
moonflask starts on a ``printer_data`` holding that database and must answer
the same.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import time

import pytest
import requests
from requests.adapters import HTTPAdapter

from capture_args_db_config_reference import write_dev_feeds
from capture_switch_reference import EXTRA_CONF, PASSWORD, PRINTED, PRINT_SECONDS, USER
from shapes import reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "switch_reference",
                  "moonraker-sql.db")
UNTRUSTED = "127.0.0.2"


class SourceAdapter(HTTPAdapter):
    """Sockets bound to an address that is not trusted (127.0.0.1/32 is)."""

    def init_poolmanager(self, *a, **kw):
        kw["source_address"] = (UNTRUSTED, 0)
        super().init_poolmanager(*a, **kw)


def untrusted() -> requests.Session:
    s = requests.Session()
    s.mount("http://", SourceAdapter())
    return s


def state(name: str):
    """What the reference answered (the ``result`` of switch_state_NAME)."""
    return reference(f"switch_state_{name}")["body"]["result"]


@pytest.fixture(scope="module")
def srv(start_server, tmp_root):
    data = os.path.join(tmp_root, "switch_pd")
    for sub in ("database", "gcodes", "config"):
        os.makedirs(os.path.join(data, sub), exist_ok=True)
    shutil.copyfile(DB, os.path.join(data, "database", "moonraker-sql.db"))
    path = write_long_gcode(os.path.join(data, "gcodes", PRINTED), PRINT_SECONDS)
    modified = state("metadata")["modified"]      # the same file, as it was then
    os.utime(path, (modified, modified))
    write_dev_feeds(data)
    return start_server(config="[authorization]\ntrusted_clients:\n  127.0.0.1/32\n" + EXTRA_CONF,
                        data_path=data)


def test_webcams_kept(srv):
    got = srv.result("GET", "/server/webcams/list")["webcams"]
    ref = state("webcams")["webcams"]
    assert sorted(got, key=lambda c: c["name"]) == sorted(ref, key=lambda c: c["name"])
    assert {c["name"]: c["stream_url"] for c in got} == {
        "printer_cam": "/webcam/?action=stream", "side": "http://cam.local/stream"}


def test_webcam_changed_after_switch_stays_in_moonrakers_form(srv):
    """Edited through moonflask, the webcam stays under its uid with
    Moonraker's field names (Moonraker reads it back after a switch back)."""
    (cam,) = [c for c in state("webcams")["webcams"] if c["name"] == "printer_cam"]
    res = srv.ws().call("server.webcams.post_item", {"uid": cam["uid"], "target_fps": 25})
    assert res["webcam"] == dict(cam, target_fps=25)
    raw = srv.result("GET", "/server/database/item?namespace=webcams")["value"]
    ref_raw = state("webcams_db")["value"]
    assert set(raw) == set(ref_raw)
    assert raw[cam["uid"]] == dict(ref_raw[cam["uid"]], targetFps=25)
    srv.ws().call("server.webcams.post_item", {"uid": cam["uid"], "target_fps": 20})
    assert srv.result("GET", "/server/database/item?namespace=webcams")["value"] == ref_raw


def test_front_end_settings_and_namespaces_kept(srv):
    for ns in ("mainsail", "fluidd"):
        got = srv.result("GET", f"/server/database/item?namespace={ns}")
        assert got == state(f"db_{ns}")
    got = srv.result("GET", "/server/database/list")["namespaces"]
    assert sorted(got) == sorted(state("db_list")["namespaces"])


def test_users_api_key_and_login_kept(srv):
    assert srv.result("GET", "/access/users/list") == state("users")
    key = srv.result("GET", "/access/api_key")
    assert key == state("api_key")
    s = untrusted()
    assert s.get(srv.url + "/server/info", timeout=10).status_code == 401
    assert s.get(srv.url + "/server/info", headers={"X-Api-Key": key},
                 timeout=10).status_code == 200
    r = s.post(srv.url + "/access/login", json={"username": USER, "password": PASSWORD},
               timeout=10)
    assert r.status_code == 200, r.text
    token = r.json()["result"]["token"]
    r = s.get(srv.url + "/access/user", headers={"Authorization": f"Bearer {token}"},
              timeout=10)
    assert r.json()["result"]["username"] == USER
    r = s.post(srv.url + "/access/login", json={"username": USER, "password": "wrong"},
               timeout=10)
    ref = reference("auth_login_bad_password")
    assert (r.status_code, r.json()["error"]["message"]) == (
        ref["status"], ref["body"]["error"]["message"])


def _exp(token: str) -> float:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]


def test_reference_login_survives(srv):
    """The refresh token the reference issued at its login still works."""
    refresh = reference("switch_login")["body"]["result"]["refresh_token"]
    if _exp(refresh) < time.time() + 60:
        pytest.skip("the recorded refresh token has expired: re-run "
                    "scripts/capture_switch_reference.py")
    s = untrusted()
    r = s.post(srv.url + "/access/refresh_jwt", json={"refresh_token": refresh}, timeout=10)
    assert r.status_code == 200, r.text
    token = r.json()["result"]["token"]
    r = s.get(srv.url + "/access/user", headers={"Authorization": f"Bearer {token}"},
              timeout=10)
    assert r.status_code == 200 and r.json()["result"]["username"] == USER
    # a tampered one is refused
    head, body, sig = refresh.split(".")
    forged = ".".join((head, body, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")))
    r = s.post(srv.url + "/access/refresh_jwt", json={"refresh_token": forged}, timeout=10)
    assert r.status_code == 401


def test_file_metadata_kept(srv):
    """gcode_metadata: the reference's record of the unchanged file is used
    (its uuid, and the print_start_time / job_id it added when printing)."""
    assert srv.result("GET", f"/server/files/metadata?filename={PRINTED}") == state("metadata")


def test_history_queue_and_announcements_kept(srv):
    assert srv.result("GET", "/server/history/list") == state("history")
    assert srv.result("GET", "/server/history/totals") == state("totals")
    # the reference keeps its queue in memory only (nothing in its database):
    # after the switch, as after its own restart, the queue is empty and paused
    assert state("queue")["queued_jobs"]
    assert srv.result("GET", "/server/job_queue/status") == {"queued_jobs": [],
                                                            "queue_state": "paused"}
    deadline = time.monotonic() + 30
    while True:
        got = srv.result("GET", "/server/announcements/list")
        if all(e in got["entries"] for e in state("announcements")["entries"]):
            break
        assert time.monotonic() < deadline, (got, state("announcements"))
        time.sleep(0.2)
    assert got["feeds"] == state("announcements")["feeds"] == state("feeds")["feeds"]
