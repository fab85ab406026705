"""Crash safety of the update manager (beyond the reference): moonflask is
killed with SIGKILL at points spread over an upgrade and, after each
restart, the repo is ``git fsck`` clean, at the old or the new version, and
the status says which; a repo with a truncated object file is reported
corrupt and ``recover hard`` repairs it keeping local branches; a managed
service that does not start after an upgrade (a real supervisord) is
rolled back."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import requests
from um_helpers import (SUPERVISORD, Origin, Supervisord, ext_section, fsck_clean, git, head,
                        releases, status, um_config, update_messages, wait_initialized)


@pytest.fixture
def base(tmp_root, request):
    path = os.path.join(tmp_root, "umc", request.node.name[:40])
    os.makedirs(path)
    return path


def _hook(repo: str, name: str, body: str) -> None:
    path = os.path.join(repo, ".git", "hooks", name)
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)


def test_kill_during_hard_recovery(start_server, base):
    origin, path, h = corrupt_repo(base)
    data = os.path.join(base, "data")
    config = um_config(ext_section("ext", path, origin.url))
    journal = os.path.join(data, "update_manager", "journal-ext.json")
    srv = start_server(config=config, data_path=data)
    wait_initialized(srv)
    assert status(srv, "ext")["corrupt"]
    t = threading.Thread(target=lambda: _quiet(srv.post, "/machine/update/recover",
                                               json={"name": "ext", "hard": True}, timeout=60),
                         daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while _journal_step(journal) is None:
        assert time.monotonic() < deadline, "the recovery never started"
        time.sleep(0.002)
    srv.kill()  # while cloning
    srv = start_server(config=config, data_path=data)
    wait_initialized(srv)
    st = status(srv, "ext")
    assert not os.path.exists(journal) and not os.path.exists(path + ".mf-recover")
    if st["corrupt"]:  # killed before the swap: the repo is as it was, and says so
        assert any("hard recovery" in a for a in st["anomalies"]), st["anomalies"]
        assert git(path, "rev-parse", "mywork").strip() == h["mywork"]
        assert srv.result("POST", "/machine/update/recover", json={"name": "ext", "hard": True},
                          timeout=60) == "ok"
    assert fsck_clean(path) and git(path, "rev-parse", "mywork").strip() == h["mywork"]
    assert not status(srv, "ext")["corrupt"]


def _quiet(fn, *args, **kw) -> None:
    try:
        fn(*args, **kw)
    except requests.RequestException:
        pass


def _journal_step(path: str) -> str | None:
    try:
        with open(path) as fh:
            return json.load(fh).get("step")
    except (OSError, ValueError):
        return None


def _upgrade_async(srv, name: str) -> threading.Thread:
    def go() -> None:
        try:
            srv.post("/machine/update/upgrade", json={"name": name}, timeout=60)
        except requests.RequestException:
            pass  # the server was killed under it
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_kill_during_upgrade_recovers(start_server, base):
    origin, tags = releases(os.path.join(base, "o"))
    old = tags["v0.1.0"]
    # the new version rewrites many files: a checkout that takes a while
    files = {f"src/file_{i:03d}.py": f"# {i}\n" * 200 for i in range(300)}
    # and changes the requirements: pip runs (in a venv of the test's) after git
    files["requirements.txt"] = "--no-index\npip\n"
    new = origin.commit(files)
    path = origin.clone(os.path.join(base, "ext"), at=old)
    venv = os.path.join(base, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    venv], check=True)
    # real git hooks slow the upgrade down so that kills land inside it:
    # the ref update waits in "prepared" (ref locked), post-merge runs after
    # the work tree was written but before git exits
    _hook(path, "reference-transaction",
          'cat >/dev/null\n[ "$1" = prepared ] && sleep 0.8\nexit 0\n')
    _hook(path, "post-merge", "sleep 0.8\n")
    data = os.path.join(base, "data")
    config = um_config(ext_section("ext", path, origin.url,
                                   f"virtualenv: {venv}\nrequirements: requirements.txt"))
    journal = os.path.join(data, "update_manager", "journal-ext.json")
    journal_glob = os.path.join(data, "update_manager", "journal-*.json")
    seen = set()
    # kill points: at evenly spaced delays, and the instant the journal
    # reaches each step of the update
    points = [("after", d) for d in (0.05, 0.5, 1.0, 1.5, 2.0, 2.5, 3.5, 6.0)] + \
        [("step", s) for s in ("begin", "git_done")]
    for kind, when in points:
        delay = (kind, when)
        srv = start_server(config=config, data_path=data)
        wait_initialized(srv)
        assert head(path) == old and status(srv, "ext")["remote_hash"] == new
        _upgrade_async(srv, "ext")
        if kind == "after":
            time.sleep(when)
        else:
            deadline = time.monotonic() + 60
            while _journal_step(journal) != when:
                assert time.monotonic() < deadline, f"journal never reached {when}"
                time.sleep(0.002)
        srv.kill()
        interrupted = bool(glob.glob(journal_glob))
        srv = start_server(config=config, data_path=data)
        wait_initialized(srv)
        st = status(srv, "ext")
        at = head(path)
        assert fsck_clean(path), delay
        assert at in (old, new), delay
        assert git(path, "status", "--porcelain") == "", delay
        assert st["current_hash"] == at and st["is_valid"], (delay, st)
        assert st["version"] == ("v0.1.0-0" if at == old else "v0.3.0-beta.1-2"), delay
        assert not glob.glob(journal_glob), delay
        assert not os.path.exists(os.path.join(path, ".git", "index.lock"))
        if interrupted:
            # the first client to identify is told what the recovery did
            ws = srv.ws()
            ws.call("server.connection.identify", {"client_name": "test", "version": "1",
                                                   "type": "web", "url": "http://t"})
            told = ws.wait_notification("notify_update_response", timeout=10)["params"][0]
            assert told["application"] == "ext" and told["complete"], told
            assert told["message"] in st["anomalies"], (told, st["anomalies"])
            note = " ".join(st["anomalies"])
            assert "Interrupted update of ext" in note, (delay, st["anomalies"])
            assert ("returned to v0.1.0-0" in note) == (at == old), (delay, note)
            log = open(os.path.join(data, "logs", "moonraker.log")).read()
            assert "resuming interrupted upgrade of ext" in log
        seen.add((interrupted, at == new))
        srv.stop()
        git(path, "reset", "-q", "--hard", old)
    # the kills covered both outcomes of an interrupted update and a finished one
    assert (True, False) in seen and (True, True) in seen and (False, True) in seen, seen


def corrupt_repo(base: str) -> tuple[Origin, str, dict[str, str]]:
    """A clone whose newest blob file is truncated, with local branches
    ``mywork`` (a local commit) and ``oldpoint`` (an upstream commit)."""
    origin = Origin(os.path.join(base, "o"))
    first = origin.commit(tag="v0.1.0")
    path = os.path.join(base, "ext")
    git(base, "clone", "-q", "--no-local", origin.url, path)
    newest = origin.commit({"data.txt": "payload " * 500}, tag="v0.2.0")
    git(path, "fetch", "-q", "origin")  # a small fetch: loose objects
    git(path, "merge", "-q", "--ff-only", "origin/master")
    git(path, "checkout", "-q", "-b", "mywork")
    with open(os.path.join(path, "mine.txt"), "w") as fh:
        fh.write("my work\n")
    git(path, "add", "mine.txt")
    git(path, "commit", "-q", "-m", "local work")
    mywork = head(path)
    git(path, "branch", "oldpoint", first)
    git(path, "checkout", "-q", "master")
    blob = git(path, "rev-parse", f"{newest}:data.txt").strip()
    obj = os.path.join(path, ".git", "objects", blob[:2], blob[2:])
    assert os.path.exists(obj)
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as fh:
        fh.truncate(10)
    return origin, path, {"first": first, "newest": newest, "mywork": mywork}


def test_corrupt_repo_recover_hard(start_server, base):
    origin, path, h = corrupt_repo(base)
    first, newest, mywork = h["first"], h["newest"], h["mywork"]
    srv = start_server(config=um_config(ext_section("ext", path, origin.url)),
                       data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    st = status(srv, "ext")
    assert st["corrupt"] and not st["is_valid"]
    assert any("corrupt" in w for w in st["warnings"])
    assert srv.post("/machine/update/upgrade", json={"name": "ext"},
                    timeout=60).status_code == 500
    ws = srv.ws()
    assert ws.call("machine.update.recover", {"name": "ext", "hard": True}, timeout=120) == "ok"
    msgs = update_messages(ws)
    assert msgs[-1]["message"] == "Git Repo ext: Reinstall Complete" and msgs[-1]["complete"]
    assert fsck_clean(path)
    st = status(srv, "ext")
    assert not st["corrupt"] and st["is_valid"] and st["branch"] == "master"
    assert head(path) == newest
    assert git(path, "rev-parse", "mywork").strip() == mywork
    assert git(path, "rev-parse", "oldpoint").strip() == first
    assert open(os.path.join(path, "data.txt")).read() == "payload " * 500
    assert not os.path.exists(path + ".mf-recover") and not os.path.exists(path + ".mf-backup")


def _refresh(srv, name: str = "ext") -> dict:
    res = srv.result("POST", "/machine/update/refresh", json={"name": name}, timeout=120)
    return res["version_info"][name]


def test_corruption_after_a_clean_refresh_is_found(start_server, base):
    """A refresh runs git fsck only when the object store changed since the
    last clean check: an object file truncated while moonflask runs (after
    clean refreshes that skipped fsck) is still reported corrupt by the next
    refresh, a loose object as a pack."""
    origin = Origin(os.path.join(base, "o"))
    origin.commit(tag="v0.1.0")
    path = os.path.join(base, "ext")
    git(base, "clone", "-q", "--no-local", origin.url, path)  # objects in a pack
    srv = start_server(config=um_config(ext_section("ext", path, origin.url)),
                       data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    assert not status(srv, "ext")["corrupt"]
    newest = origin.commit({"data.txt": "payload " * 500})
    st = _refresh(srv)  # fetches the new commit as loose objects
    assert st["remote_hash"] == newest and not st["corrupt"]
    assert not _refresh(srv)["corrupt"]  # nothing changed
    blob = git(path, "rev-parse", f"{newest}:data.txt").strip()
    obj = os.path.join(path, ".git", "objects", blob[:2], blob[2:])
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as fh:
        fh.truncate(10)
    st = _refresh(srv)
    assert st["corrupt"] and not st["is_valid"], st
    assert any("corrupt" in w for w in st["warnings"])
    assert _refresh(srv)["corrupt"]  # still, at every refresh
    assert srv.result("POST", "/machine/update/recover", json={"name": "ext", "hard": True},
                      timeout=120) == "ok"
    assert not status(srv, "ext")["corrupt"] and fsck_clean(path)
    git(path, "repack", "-q", "-a", "-d")  # a pack of its own (the clone hard-links origin's)
    assert not _refresh(srv)["corrupt"]
    assert not _refresh(srv)["corrupt"]
    packs = glob.glob(os.path.join(path, ".git", "objects", "pack", "*.pack"))
    assert packs
    for pack in packs:
        os.chmod(pack, 0o644)
        with open(pack, "r+b") as fh:
            fh.truncate(os.path.getsize(pack) // 2)
    assert _refresh(srv)["corrupt"]


@pytest.mark.skipif(not os.path.exists(SUPERVISORD), reason="supervisor is not installed")
def test_service_failure_rolls_back(start_server, base):
    origin = Origin(os.path.join(base, "o"))
    good = origin.commit({"run.sh": "exec sleep 100000\n"}, tag="v1.0.0")
    path = origin.clone(os.path.join(base, "myservice"))
    bad = origin.commit({"run.sh": "echo broken >&2; exit 3\n"}, tag="v1.1.0")
    sv = Supervisord(os.path.join(base, "sv"), "myservice", path)
    try:
        data = os.path.join(base, "data")
        os.makedirs(data)
        with open(os.path.join(data, "moonraker.asvc"), "w") as fh:
            fh.write("myservice\n")
        config = (f"[machine]\nprovider: supervisord_cli\n"
                  f"supervisord_config_path: {sv.conf}\n\n"
                  "[update_manager]\nenable_system_updates: False\n\n"
                  f"[update_manager myservice]\ntype: git_repo\npath: {path}\n"
                  f"origin: {origin.url}\n")
        srv = start_server(config=config, data_path=data)
        wait_initialized(srv)
        assert status(srv, "myservice")["remote_hash"] == bad
        ws = srv.ws()
        resp = srv.post("/machine/update/upgrade", json={"name": "myservice"}, timeout=120)
        assert resp.status_code == 500
        assert "Rolled back to v1.0.0-0" in resp.json()["error"]["message"]
        msgs = [m["message"] for m in update_messages(ws)]
        assert "Git Repo myservice: Restarting service myservice..." in msgs
        assert any("did not start" in m and "rolling back to v1.0.0-0" in m for m in msgs)
        assert msgs[-1].startswith("Error: ")
        assert head(path) == good and fsck_clean(path)
        st = status(srv, "myservice")
        assert st["version"] == "v1.0.0-0"
        assert any("Rolled back to v1.0.0-0" in a for a in st["anomalies"])
        assert sv.running("myservice")
    finally:
        sv.stop()
