"""The update manager's git_repo type against real git repositories: a bare
"origin" made here with tagged releases, cloned as the managed repo; new
commits and tags pushed to it, refreshed, upgraded to, rolled back from; the
dirty, detached, wrong-remote, pinned and corrupt cases; the channels; and
the shapes recorded from the real Moonraker 0.11.0
(scripts/capture_update_manager.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import REPO

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from long_gcode import write_long_gcode  # noqa: E402
from shapes import reference, shape_diff
from um_helpers import (Origin, ext_section, fsck_clean, git, head, releases, status,
                        um_config, update_messages, wait_initialized)


@pytest.fixture
def base(tmp_root, request):
    """A fresh folder for the test's repos and data."""
    path = os.path.join(tmp_root, "um", request.node.name[:40])
    os.makedirs(path)
    return path


@pytest.fixture
def serve(start_server, base):
    """``serve(config)``: a moonflask on a fresh data folder, update manager
    initialised."""
    def factory(config: str, **kw):
        srv = start_server(config=config, data_path=os.path.join(base, "data"), **kw)
        wait_initialized(srv)
        return srv
    return factory


def test_status_shape_upgrade_rollback(serve, base):
    origin, tags = releases(os.path.join(base, "o"))
    path = origin.clone(os.path.join(base, "myext"), at="v0.1.0")
    srv = serve(um_config(ext_section("myext", path, origin.url,
                                      "info_tags:\n  desc=My Extension")))
    res = srv.result("GET", "/machine/update/status")
    ref = reference("update_manager_http_status")["body"]["result"]
    assert shape_diff({k: v for k, v in ref.items() if k != "version_info"},
                      {k: v for k, v in res.items() if k != "version_info"}) == []
    ours = res["version_info"]["myext"]
    assert shape_diff(ref["version_info"]["myext"], ours) == []
    assert list(ours) == list(ref["version_info"]["myext"])  # the reference's key order
    assert ours["version"] == "v0.1.0-0" and ours["remote_version"] == "v0.3.0-beta.1-1"
    assert ours["current_hash"] == tags["v0.1.0"] and ours["remote_hash"] == tags["dev"]
    assert ours["commits_behind_count"] == 3 and ours["is_valid"] and ours["pristine"]
    assert [c["tag"] for c in ours["commits_behind"]] == [None, "v0.3.0-beta.1", "v0.2.0"]
    assert ours["commits_behind"][0]["message"] == "Body of change 4."
    assert ours["info_tags"] == ["desc=My Extension"] and ours["rollback_version"] == "v0.1.0-0"
    assert ours["full_version_string"] == f"v0.1.0-0-g{tags['v0.1.0'][:8]}"

    ws = srv.ws()
    assert ws.call("machine.update.upgrade", {"name": "myext"}, timeout=60) == "ok"
    msgs = update_messages(ws)
    assert [m["message"] for m in msgs[:2]] == ["Updating Application myext...",
                                                "Git Repo myext: Updating Repo..."]
    assert "Fast-forward" in [m["message"] for m in msgs]
    assert msgs[-1] == {"message": "Git Repo myext: Update Finished...", "application": "myext",
                        "proc_id": msgs[0]["proc_id"], "complete": True}
    assert all(not m["complete"] for m in msgs[:-1])
    assert len({m["proc_id"] for m in msgs}) == 1
    assert head(path) == tags["dev"]
    st = status(srv, "myext")
    assert (st["version"], st["rollback_version"], st["commits_behind"]) == \
        ("v0.3.0-beta.1-1", "v0.1.0-0", [])
    ref_after = reference("update_manager_http_status_after_upgrade")["body"]["result"]
    assert shape_diff(ref_after["version_info"]["myext"], st) == []

    assert srv.result("POST", "/machine/update/rollback", json={"name": "myext"}) == "ok"
    assert head(path) == tags["v0.1.0"]
    st = status(srv, "myext")
    assert st["version"] == "v0.1.0-0" and st["commits_behind_count"] == 3
    assert fsck_clean(path)


def test_refresh_lists_pushed_commits_and_tags(serve, base):
    origin, tags = releases(os.path.join(base, "o"))
    path = origin.clone(os.path.join(base, "ext"), at=tags["dev"])
    srv = serve(um_config(ext_section("ext", path, origin.url)))
    assert status(srv, "ext")["commits_behind"] == []
    new1 = origin.commit()
    new2 = origin.commit(tag="v0.3.0")
    ws = srv.ws()
    res = ws.call("machine.update.refresh", {"name": "ext"}, timeout=30)
    note = ws.wait_notification("notify_update_refreshed")
    assert note["params"][0]["version_info"]["ext"]["remote_hash"] == new2
    ref = reference("update_manager_rpc_refresh_myext")
    for ours, theirs in ((res, ref["body"]["result"]),
                         (note["params"][0], ref["notifications"][0]["params"][0])):
        assert shape_diff({**theirs, "version_info": theirs["version_info"]["myext"]},
                          {**ours, "version_info": ours["version_info"]["ext"]}) == []
    st = res["version_info"]["ext"]
    assert [(c["sha"], c["tag"]) for c in st["commits_behind"]] == [(new2, "v0.3.0"),
                                                                   (new1, None)]
    assert st["remote_version"] == "v0.3.0-0" and st["commits_behind_count"] == 2
    # refresh of everything (no name) also works
    assert srv.result("POST", "/machine/update/refresh")["version_info"]["ext"][
        "remote_hash"] == new2
    assert srv.result("POST", "/machine/update/upgrade", json={"name": "ext"},
                      timeout=60) == "ok"
    assert head(path) == new2 and status(srv, "ext")["version"] == "v0.3.0-0"


def test_channels(serve, base):
    origin, tags = releases(os.path.join(base, "o"))
    paths = {ch: origin.clone(os.path.join(base, ch), at="v0.1.0")
             for ch in ("stable", "beta", "dev")}
    srv = serve(um_config(*(ext_section(f"app_{ch}", p, origin.url, f"channel: {ch}")
                            for ch, p in paths.items())))
    vi = status(srv)["version_info"]
    assert vi["app_stable"]["remote_version"] == "v0.2.0-0"
    assert vi["app_stable"]["remote_hash"] == tags["v0.2.0"]
    assert vi["app_beta"]["remote_version"] == "v0.3.0-beta.1-0"
    assert vi["app_dev"]["remote_version"] == "v0.3.0-beta.1-1"
    assert vi["app_stable"]["channel"] == "stable"
    for ch, want in (("stable", "v0.2.0"), ("beta", "v0.3.0-beta.1"), ("dev", "dev")):
        assert srv.result("POST", "/machine/update/upgrade", json={"name": f"app_{ch}"},
                          timeout=60) == "ok"
        assert head(paths[ch]) == tags[want], ch
    # a new stable release is picked up by the stable channel only
    rel = origin.commit(tag="v0.3.0")
    vi = srv.result("POST", "/machine/update/refresh")["version_info"]
    assert vi["app_stable"]["remote_hash"] == rel and vi["app_beta"]["remote_hash"] == rel
    assert vi["app_stable"]["commits_behind_count"] == 3


def test_dirty_detached_remote_pinned(serve, base):
    origin, tags = releases(os.path.join(base, "o"))
    dirty = origin.clone(os.path.join(base, "dirty"), at="v0.1.0")
    with open(os.path.join(dirty, "app.py"), "a") as fh:
        fh.write("# local change\n")
    untracked = origin.clone(os.path.join(base, "untracked"), at="v0.1.0")
    with open(os.path.join(untracked, "extra.py"), "w") as fh:
        fh.write("x = 1\n")
    detached = origin.clone(os.path.join(base, "detached"))
    git(detached, "checkout", "-q", "--detach", "v0.2.0")
    fork = Origin(os.path.join(base, "fork"))
    fork.commit(tag="v9.0.0")
    wrong = fork.clone(os.path.join(base, "wrong"))
    pinned = origin.clone(os.path.join(base, "pinned"), at="v0.1.0")
    beyond = origin.clone(os.path.join(base, "beyond"), at=tags["dev"])
    moved = fork.clone(os.path.join(base, "moved"))
    git(moved, "fetch", "-q", origin.url, "master")
    git(moved, "reset", "-q", "--hard", tags["v0.1.0"])
    diverged = origin.clone(os.path.join(base, "diverged"), at=tags["v0.1.0"])
    with open(os.path.join(diverged, "mine.py"), "w") as fh:
        fh.write("mine = 1\n")
    git(diverged, "add", "mine.py")
    git(diverged, "commit", "-q", "-m", "local only")
    local_only = head(diverged)
    srv = serve(um_config(
        ext_section("dirty", dirty, origin.url), ext_section("untracked", untracked, origin.url),
        ext_section("detached", detached, origin.url), ext_section("wrong", wrong, origin.url),
        ext_section("pinned", pinned, origin.url, f"pinned_commit: {tags['v0.2.0'][:10]}"),
        ext_section("beyond", beyond, origin.url, f"pinned_commit: {tags['v0.2.0']}"),
        ext_section("moved", moved, origin.url, f"moved_origin: {fork.url}"),
        ext_section("diverged", diverged, origin.url)))
    vi = status(srv)["version_info"]
    d = vi["dirty"]
    assert d["is_dirty"] and not d["pristine"] and not d["is_valid"]
    assert d["full_version_string"].endswith("-dirty") and d["version"] == "v0.1.0-0"
    assert d["warnings"] == ["Repo is dirty.  Detected the following modified files: "
                             "['app.py']"]
    u = vi["untracked"]
    assert u["is_valid"] and not u["is_dirty"] and not u["pristine"]
    assert any("extra.py" in a for a in u["anomalies"])
    dt = vi["detached"]
    assert dt["detached"] and not dt["is_valid"] and "Detached HEAD detected" in dt["warnings"]
    w = vi["wrong"]
    assert f"Unofficial remote url: {fork.url}" in w["anomalies"] and w["is_valid"]
    assert w["remote_url"] == fork.url and w["recovery_url"] == origin.url
    p = vi["pinned"]
    assert p["remote_hash"] == tags["v0.2.0"] and p["is_valid"]
    b = vi["beyond"]
    assert not b["is_valid"] and any("beyond the pinned commit" in x for x in b["warnings"])
    mv = vi["moved"]
    assert mv["remote_url"] == origin.url and mv["remote_hash"] == tags["dev"]
    assert f"Remote url moved from {fork.url} to {origin.url}" in mv["anomalies"]
    assert git(moved, "remote", "get-url", "origin").strip() == origin.url
    dv = vi["diverged"]
    assert any("local commits" in a for a in dv["anomalies"]) and dv["is_valid"]
    resp = srv.post("/machine/update/upgrade", json={"name": "diverged"}, timeout=60)
    assert resp.status_code == 500 and "local commits" in resp.json()["error"]["message"]
    assert head(diverged) == local_only
    # updates are refused on invalid repos, with the reason, nothing changed
    resp = srv.post("/machine/update/upgrade", json={"name": "dirty"}, timeout=60)
    assert resp.status_code == 500 and "dirty" in resp.json()["error"]["message"]
    assert head(dirty) == tags["v0.1.0"]
    assert srv.result("POST", "/machine/update/upgrade", json={"name": "pinned"},
                      timeout=60) == "ok"
    assert head(pinned) == tags["v0.2.0"]
    assert status(srv, "pinned")["commits_behind"] == []
    # a soft recovery resets the dirty repo
    ws = srv.ws()
    assert ws.call("machine.update.recover", {"name": "dirty"}, timeout=60) == "ok"
    msgs = [m["message"] for m in update_messages(ws)]
    assert msgs[-1] == "Git Repo dirty: Reinstall Complete"
    assert "Git Repo dirty: Resetting Git Repo..." in msgs
    d = status(srv, "dirty")
    assert d["is_valid"] and not d["is_dirty"] and git(dirty, "status", "--porcelain") == ""


def test_errors_match_reference(serve, base):
    origin, _ = releases(os.path.join(base, "o"))
    path = origin.clone(os.path.join(base, "ext"), at="v0.1.0")
    srv = serve(um_config(ext_section("ext", path, origin.url)))
    for name, method, path_, body in (
            ("refresh_unknown", "POST", "/machine/update/refresh", {"name": "nothing"}),
            ("upgrade_unknown", "POST", "/machine/update/upgrade", {"name": "nothing"}),
            ("recover_unknown", "POST", "/machine/update/recover", {"name": "nothing"}),
            ("rollback_unknown", "POST", "/machine/update/rollback", {"name": "nothing"}),
            ("recover_missing", "POST", "/machine/update/recover", {})):
        ref = reference(f"update_manager_http_{name}")
        resp = srv.post(path_, json=body)
        assert resp.status_code == ref["status"], name
        assert resp.json()["error"]["message"] == ref["body"]["error"]["message"], name
    ws = srv.ws()
    with pytest.raises(Exception) as exc:
        ws.call("machine.update.upgrade", {"name": "nothing"})
    assert exc.value.code == -32601
    # no rollback before any update: refused, nothing changed
    resp = srv.post("/machine/update/rollback", json={"name": "ext"})
    assert resp.status_code == 500 and "no rollback" in resp.json()["error"]["message"]
    msgs = update_messages(ws)
    assert msgs[-1]["complete"] and msgs[-1]["message"].startswith("Error: ")
    assert head(path) == git(path, "rev-parse", "v0.1.0^{commit}").strip()


def test_builtin_entries(serve, base):
    srv = serve(um_config("[update_manager estimator]\ntype: executable\nrepo: a/b\n"
                          "path: /nonexistent\n", main="channel: beta\n"))
    vi = status(srv)["version_info"]
    est = vi["estimator"]  # an executable whose folder is missing: invalid, says why
    assert est["configured_type"] == "executable" and not est["is_valid"]
    assert any("release_info.json" in w for w in est["warnings"])
    assert list(vi)[:2] == ["moonraker", "klipper"]
    own = vi["moonraker"]
    assert own["configured_type"] == "git_repo" and own["repo_detected"]
    assert own["current_hash"] == git(REPO, "rev-parse", "HEAD").strip()
    deadline = time.monotonic() + 30
    while "not known yet" in " ".join(vi["klipper"]["warnings"]):
        # Klippy's path arrives when it identifies; the entry is refreshed then
        assert time.monotonic() < deadline, vi["klipper"]
        time.sleep(0.1)
        vi = status(srv)["version_info"]
    k = vi["klipper"]
    assert own["channel"] == k["channel"] == "beta"  # [update_manager] channel
    # the simulated printer's Klippy is a pip install: not updatable, and says why
    assert not k["is_valid"] and not k["repo_detected"]
    assert any("not a git checkout" in w for w in k["warnings"])
    ref = reference("update_manager_http_status")["body"]["result"]["version_info"]["myext"]
    assert shape_diff(ref, k) == [] and shape_diff(ref, own) == []
    resp = srv.post("/machine/update/klipper", timeout=30)
    assert resp.status_code == 500 and "not a git checkout" in resp.json()["error"]["message"]


def test_status_refresh_param_and_busy(serve, base):
    origin, _ = releases(os.path.join(base, "o"))
    path = origin.clone(os.path.join(base, "ext"), at="v0.1.0")
    hook = os.path.join(path, ".git", "hooks", "reference-transaction")
    with open(hook, "w") as fh:  # makes the update slow enough to observe
        fh.write("#!/bin/sh\ncat >/dev/null\n[ \"$1\" = prepared ] && sleep 2\nexit 0\n")
    os.chmod(hook, 0o755)
    srv = serve(um_config(ext_section("ext", path, origin.url)))
    new = origin.commit()
    # refreshed within the last 60 s: the deprecated refresh is skipped
    assert srv.result("GET", "/machine/update/status?refresh=true")["version_info"]["ext"][
        "remote_hash"] != new
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        r=srv.post("/machine/update/upgrade", json={"name": "ext"}, timeout=60)))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not status(srv)["busy"]:
            assert time.monotonic() < deadline, "never busy"
            time.sleep(0.05)
        assert srv.post("/machine/update/refresh", json={"name": "ext"}).status_code == 503
        assert srv.post("/machine/update/upgrade", json={"name": "ext"}).status_code == 503
    finally:
        t.join(60)
    assert result["r"].status_code == 200 and not status(srv)["busy"]


def _wait_print_state(srv, *want: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = srv.result("GET", "/printer/objects/query?print_stats=state")[
            "status"]["print_stats"]["state"]
        if state in want:
            return
        time.sleep(0.1)
    raise TimeoutError(f"print_stats.state is {state}, not {want}")


def test_refused_while_printing(serve, base, printer):
    origin, tags = releases(os.path.join(base, "o"))
    path = origin.clone(os.path.join(base, "ext"), at="v0.1.0")
    srv = serve(um_config(ext_section("ext", path, origin.url)))
    write_long_gcode(os.path.join(printer.gcodes, "um_long.gcode"), 12)
    srv.post("/printer/gcode/script",
             params={"script": "SDCARD_PRINT_FILE FILENAME=um_long.gcode"}, timeout=5)
    try:
        _wait_print_state(srv, "printing")
        ref = reference("update_manager_http_upgrade_printing")
        resp = srv.post("/machine/update/upgrade", json={"name": "ext"}, timeout=30)
        assert resp.status_code == ref["status"] == 503
        assert resp.json()["error"]["message"] == ref["body"]["error"]["message"]
        ref = reference("update_manager_http_refresh_printing")
        resp = srv.post("/machine/update/refresh", json={"name": "ext"}, timeout=30)
        assert resp.status_code == ref["status"] == 503
        assert resp.json()["error"]["message"] == ref["body"]["error"]["message"]
        srv.post("/printer/print/pause", timeout=30)  # keeps the print alive however slow
        _wait_print_state(srv, "paused")
        # moonflask also refuses while paused (the reference does not): the print
        # would not survive a restart of Klipper or moonflask
        for route, body in (("upgrade", {"name": "ext"}), ("rollback", {"name": "ext"}),
                            ("recover", {"name": "ext"}), ("full", None)):
            resp = srv.post(f"/machine/update/{route}", json=body, timeout=30)
            assert resp.status_code == 503, route
            assert resp.json()["error"]["message"] == "Update Refused: Klippy is printing"
        assert head(path) == tags["v0.1.0"]
    finally:
        srv.post("/printer/print/cancel", timeout=30)
    _wait_print_state(srv, "cancelled", "standby")
    assert srv.result("POST", "/machine/update/upgrade", json={"name": "ext"},
                      timeout=60) == "ok"


def test_auto_refresh(start_server, base, monkeypatch):
    origin, tags = releases(os.path.join(base, "o"))
    inside = origin.clone(os.path.join(base, "inside"), at=tags["dev"])
    hour = time.localtime().tm_hour
    # one "hour" of refresh_interval lasts 2 s; the refresher checks every 0.5 s
    monkeypatch.setenv("MOONFLASK_UPDATE_HOUR_SECONDS", "2")
    monkeypatch.setenv("MOONFLASK_UPDATE_CHECK_PERIOD", "0.5")
    window = f"{hour}-{(hour + 2) % 24}"  # still inside if the hour turns meanwhile
    srv = start_server(config=um_config(
        ext_section("inside", inside, origin.url),
        main=f"enable_auto_refresh: True\nrefresh_interval: 1\nrefresh_window: {window}\n"),
        data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    ws = srv.ws()
    new = origin.commit()
    msg = ws.wait_notification(
        "notify_update_refreshed", timeout=30,
        predicate=lambda m: m["params"][0]["version_info"]["inside"]["remote_hash"] == new)
    assert msg["params"][0]["busy"] is False
    assert status(srv, "inside")["commits_behind"][0]["sha"] == new
    srv.stop()
    # outside the window: never refreshed by itself
    outside = (hour + 3) % 24
    srv = start_server(config=um_config(
        ext_section("inside", inside, origin.url),
        main=f"enable_auto_refresh: True\nrefresh_interval: 1\n"
             f"refresh_window: {outside}-{(outside + 1) % 24}\n"),
        data_path=os.path.join(base, "data2"))
    wait_initialized(srv)
    newer = origin.commit()
    time.sleep(5)  # 2.5 intervals: a refresh would have run
    assert status(srv, "inside")["remote_hash"] != newer
    assert srv.result("POST", "/machine/update/refresh", json={"name": "inside"})[
        "version_info"]["inside"]["remote_hash"] == newer


def test_full_and_client(serve, base):
    origin, tags = releases(os.path.join(base, "o"))
    one = origin.clone(os.path.join(base, "one"), at="v0.1.0")
    two = origin.clone(os.path.join(base, "two"), at="v0.1.0")
    three = origin.clone(os.path.join(base, "three"), at="v0.1.0")
    own = git(REPO, "rev-parse", "HEAD").strip()
    # moonflask's own checkout is pinned where it is: a full update never touches it
    srv = serve(um_config(ext_section("one", one, origin.url),
                          ext_section("two", two, origin.url),
                          ext_section("three", three, origin.url),
                          f"[update_manager moonraker]\npinned_commit: {own}\n"))
    ws = srv.ws()
    assert ws.call("machine.update.full", timeout=120) == "ok"
    msgs = update_messages(ws, timeout=120)
    apps = [m["application"] for m in msgs]
    assert apps[0] == "one" and apps[-1] == "full"
    assert msgs[-1]["message"] == "Full Update Complete" and msgs[-1]["complete"]
    assert sum(m["complete"] for m in msgs) == 1
    assert "Git Repo two: Update Finished..." in [m["message"] for m in msgs]
    assert head(one) == head(two) == head(three) == tags["dev"]
    assert git(REPO, "rev-parse", "HEAD").strip() == own
    for path in (one, two):
        git(path, "reset", "-q", "--hard", tags["v0.1.0"])
    srv.result("POST", "/machine/update/refresh")
    assert srv.result("POST", "/machine/update/client", json={"name": "one"},
                      timeout=60) == "ok"
    assert head(one) == tags["dev"] and head(two) == tags["v0.1.0"]
    assert srv.result("POST", "/machine/update/upgrade", timeout=120) == "ok"  # no name: all
    assert head(two) == tags["dev"]


def test_bad_configuration_is_reported(start_server, base):
    srv = start_server(config=um_config(main="channel: nightly\n"),
                       data_path=os.path.join(base, "data"))
    assert srv.get("/machine/update/status").status_code == 404
    warnings = srv.result("GET", "/server/info")["warnings"]
    assert any("option 'channel' must be one of stable, beta, dev, not 'nightly'" in w
               for w in warnings), warnings


def test_dependency_failure_rolls_back(serve, base, monkeypatch):
    origin, tags = releases(os.path.join(base, "o"))
    path = origin.clone(os.path.join(base, "ext"), at=tags["dev"])
    broken = origin.commit({"requirements.txt": "no-such-package-mf==9.9\n"})
    venv = os.path.join(base, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    venv], check=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    srv = serve(um_config(ext_section("ext", path, origin.url,
                                      f"virtualenv: {venv}\nrequirements: requirements.txt")))
    assert status(srv, "ext")["remote_hash"] == broken
    ws = srv.ws()
    resp = srv.post("/machine/update/upgrade", json={"name": "ext"}, timeout=120)
    assert resp.status_code == 500
    assert "dependencies did not install" in resp.json()["error"]["message"]
    msgs = [m["message"] for m in update_messages(ws, timeout=120)]
    assert "Git Repo ext: Updating python packages..." in msgs
    assert any("rolling back to v0.3.0-beta.1-1" in m for m in msgs)
    assert "Git Repo ext: no requirements.txt in this version" in msgs
    assert head(path) == tags["dev"] and fsck_clean(path)
    assert not os.path.exists(os.path.join(path, "requirements.txt"))
    st = status(srv, "ext")
    assert st["is_valid"] and any("Rolled back to" in a for a in st["anomalies"])
