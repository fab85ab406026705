"""The ``web``, ``zip`` and ``executable`` updaters against a small HTTP server on 127.0.0.1
that answers GitHub's releases API (with its rate-limit headers) and serves
the release zips (moonflask reaches it through MOONFLASK_GITHUB_API_URL)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from um_helpers import (SUPERVISORD, Supervisord, status, um_config, update_messages,
                        wait_initialized)


def make_zip(version: str, files: dict[str, str], owner: str = "acme",
             project: str = "client", asset_name: str | None = None) -> bytes:
    buf = io.BytesIO()
    info = {"project_name": project, "project_owner": owner, "version": version}
    if asset_name:
        info["asset_name"] = asset_name
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("release_info.json", json.dumps(info))
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


class FakeGitHub:
    """GitHub's ``GET /repos/OWNER/REPO/releases`` and asset downloads."""

    def __init__(self) -> None:
        self.releases: dict[str, list[dict]] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.remaining = 60
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(self.path)
                if self.path.startswith("/download/") and self.path[10:] in fake.blobs:
                    body, ctype, extra = fake.blobs[self.path[10:]], "application/zip", {}
                elif self.path.startswith("/repos/") and self.path.endswith("/releases"):
                    repo = self.path[len("/repos/"):-len("/releases")]
                    fake.remaining -= 1
                    body = json.dumps(fake.releases.get(repo, [])).encode()
                    ctype = "application/json"
                    extra = {"X-RateLimit-Limit": "60",
                             "X-RateLimit-Remaining": str(fake.remaining),
                             "X-RateLimit-Reset": "1900000000"}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def release(self, repo: str, tag: str, asset: str, data: bytes, prerelease: bool = False,
                digest: str | None = "auto") -> None:
        """Publish ``data`` as asset ``asset`` of release ``tag`` (newest first)."""
        key = f"{repo.replace('/', '_')}_{tag}_{asset}"
        self.blobs[key] = data
        entry = {"name": asset, "browser_download_url": f"{self.url}/download/{key}",
                 "size": len(data)}
        if digest == "auto":
            entry["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        elif digest is not None:
            entry["digest"] = digest
        self.releases.setdefault(repo, []).insert(0, {
            "tag_name": tag, "name": tag, "draft": False, "prerelease": prerelease,
            "assets": [entry]})

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def github(monkeypatch):
    fake = FakeGitHub()
    monkeypatch.setenv("MOONFLASK_GITHUB_API_URL", fake.url)
    yield fake
    fake.stop()


def install(path: str, version: str, files: dict[str, str], **kw) -> None:
    with zipfile.ZipFile(io.BytesIO(make_zip(version, files, **kw))) as zf:
        zf.extractall(path)


def web_section(name: str, path: str, extra: str = "", kind: str = "web") -> str:
    return (f"[update_manager {name}]\ntype: {kind}\nrepo: acme/client\npath: {path}\n"
            f"{extra}\n")


def test_web_upgrade_rollback_persistent(start_server, tmp_root, github):
    base = os.path.join(tmp_root, "umw", "web")
    path = os.path.join(base, "client")
    install(path, "v1.0.0", {"index.html": "one", "old_only.js": "x"})
    with open(os.path.join(path, "config.json"), "w") as fh:
        fh.write('{"theme": "mine"}')
    github.release("acme/client", "v1.1.0", "client.zip",
                   make_zip("v1.1.0", {"index.html": "two", "config.json": "{}"}))
    github.release("acme/client", "v1.2.0-beta", "client.zip",
                   make_zip("v1.2.0-beta", {"index.html": "three"}), prerelease=True)
    beta_path = os.path.join(base, "beta")
    install(beta_path, "v1.0.0", {"index.html": "one"}, asset_name="client.zip")
    srv = start_server(config=um_config(
        web_section("client", path, "persistent_files:\n  config.json\ninfo_tags:\n  desc=UI"),
        web_section("beta", beta_path, "channel: beta")), data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    res = srv.result("GET", "/machine/update/status")
    assert res["github_rate_limit"] == 60 and res["github_limit_reset_time"] == 1900000000
    assert isinstance(res["github_requests_remaining"], int)
    c = res["version_info"]["client"]
    assert (c["version"], c["remote_version"], c["configured_type"], c["channel"]) == \
        ("v1.0.0", "v1.1.0", "web", "stable")
    assert c["is_valid"] and c["owner"] == "acme" and c["info_tags"] == ["desc=UI"]
    assert res["version_info"]["beta"]["remote_version"] == "v1.2.0-beta"
    ws = srv.ws()
    assert ws.call("machine.update.upgrade", {"name": "client"}, timeout=60) == "ok"
    msgs = [m["message"] for m in update_messages(ws)]
    assert "Web Client client: SHA-256 checksum verified" in msgs
    assert msgs[-1] == "Web Client client: Update Finished..."
    assert open(os.path.join(path, "index.html")).read() == "two"
    assert open(os.path.join(path, "config.json")).read() == '{"theme": "mine"}'
    assert not os.path.exists(os.path.join(path, "old_only.js"))
    c = status(srv, "client")
    assert (c["version"], c["rollback_version"]) == ("v1.1.0", "v1.0.0")
    assert srv.result("POST", "/machine/update/rollback", json={"name": "client"}) == "ok"
    assert open(os.path.join(path, "index.html")).read() == "one"
    assert os.path.exists(os.path.join(path, "old_only.js"))
    assert open(os.path.join(path, "config.json")).read() == '{"theme": "mine"}'
    assert status(srv, "client")["version"] == "v1.0.0"
    assert srv.result("POST", "/machine/update/upgrade", json={"name": "beta"},
                      timeout=60) == "ok"
    assert open(os.path.join(beta_path, "index.html")).read() == "three"


def test_web_bad_checksum_and_bad_zip(start_server, tmp_root, github):
    base = os.path.join(tmp_root, "umw", "bad")
    path = os.path.join(base, "client")
    install(path, "v1.0.0", {"index.html": "one"})
    github.release("acme/client", "v1.1.0", "client.zip",
                   make_zip("v1.1.0", {"index.html": "two"}), digest="sha256:" + "0" * 64)
    srv = start_server(config=um_config(web_section("client", path)),
                       data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    resp = srv.post("/machine/update/upgrade", json={"name": "client"}, timeout=60)
    assert resp.status_code == 500 and "checksum mismatch" in resp.json()["error"]["message"]
    assert open(os.path.join(path, "index.html")).read() == "one"
    assert sorted(os.listdir(base)) == ["client", "data"]
    # a release without release_info.json is refused too
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.html", "broken")
    github.release("acme/client", "v1.2.0", "client.zip", buf.getvalue())
    srv.result("POST", "/machine/update/refresh", json={"name": "client"})
    resp = srv.post("/machine/update/upgrade", json={"name": "client"}, timeout=60)
    assert resp.status_code == 500 and "release_info.json" in resp.json()["error"]["message"]
    assert open(os.path.join(path, "index.html")).read() == "one"
    assert status(srv, "client")["version"] == "v1.0.0"


def test_zip_kill_during_swap_is_completed(start_server, tmp_root, github):
    base = os.path.join(tmp_root, "umw", "zipkill")
    path = os.path.join(base, "app")
    install(path, "v1.0.0", {"app.py": "one"})
    big = {f"f{i}.txt": "x" * 20000 for i in range(400)}
    github.release("acme/client", "v2.0.0", "app.zip", make_zip("v2.0.0", {"app.py": "two",
                                                                         **big}))
    data = os.path.join(base, "data")
    config = um_config(web_section("app", path, "is_system_service: False", kind="zip"))
    journal = os.path.join(data, "update_manager", "journal-app.json")
    outcomes = set()
    for delay in (0.0, 0.05, 0.2, 0.5, 1.0):
        srv = start_server(config=config, data_path=data)
        wait_initialized(srv)
        t = threading.Thread(target=lambda: _quiet_post(srv), daemon=True)
        t.start()
        time.sleep(delay)
        srv.kill()
        srv = start_server(config=config, data_path=data)
        wait_initialized(srv)
        st = status(srv, "app")
        text = open(os.path.join(path, "app.py")).read()
        assert text in ("one", "two")
        assert st["version"] == ("v1.0.0" if text == "one" else "v2.0.0")
        assert not os.path.exists(journal)
        assert not os.path.exists(path + ".mf-new") and not os.path.exists(path + ".mf-trash")
        outcomes.add(text)
        srv.stop()
        if text == "two":  # back to v1.0.0 for the next round
            import shutil
            shutil.rmtree(path)
            install(path, "v1.0.0", {"app.py": "one"})
    assert outcomes  # every round ended at one of the two releases


def _quiet_post(srv) -> None:
    try:
        srv.post("/machine/update/upgrade", json={"name": "app"}, timeout=60)
    except Exception:
        pass


def test_github_rate_limit_respected(start_server, tmp_root, github):
    base = os.path.join(tmp_root, "umw", "limit")
    path = os.path.join(base, "client")
    install(path, "v1.0.0", {"index.html": "one"})
    github.release("acme/client", "v1.1.0", "client.zip", make_zip("v1.1.0", {}))
    github.remaining = 2  # the initial refresh leaves one, the next none
    srv = start_server(config=um_config(web_section("client", path)),
                       data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    assert status(srv)["github_requests_remaining"] == 1
    srv.result("POST", "/machine/update/refresh", json={"name": "client"})
    asked = len([r for r in github.requests if r.endswith("/releases")])
    res = srv.result("POST", "/machine/update/refresh", json={"name": "client"})
    assert res["github_requests_remaining"] == 0
    assert res["version_info"]["client"]["last_error"].startswith("GitHub rate limit reached")
    assert len([r for r in github.requests if r.endswith("/releases")]) == asked


@pytest.mark.skipif(not os.path.exists(SUPERVISORD), reason="supervisor is not installed")
def test_zip_service_failure_restores_release(start_server, tmp_root, github):
    base = os.path.join(tmp_root, "umw", "zipsvc")
    path = os.path.join(base, "mysvc")
    install(path, "v1.0.0", {"run.sh": "exec sleep 100000\n"})
    github.release("acme/client", "v1.1.0", "mysvc.zip",
                   make_zip("v1.1.0", {"run.sh": "exit 3\n"}))
    sv = Supervisord(os.path.join(base, "sv"), "mysvc", path)
    try:
        data = os.path.join(base, "data")
        os.makedirs(data)
        with open(os.path.join(data, "moonraker.asvc"), "w") as fh:
            fh.write("mysvc\n")
        srv = start_server(config=(
            f"[machine]\nprovider: supervisord_cli\nsupervisord_config_path: {sv.conf}\n\n"
            "[update_manager]\nenable_system_updates: False\n\n"
            + web_section("mysvc", path, kind="zip")), data_path=data)
        wait_initialized(srv)
        assert status(srv, "mysvc")["remote_version"] == "v1.1.0"
        resp = srv.post("/machine/update/upgrade", json={"name": "mysvc"}, timeout=120)
        assert resp.status_code == 500
        assert "Rolled back to v1.0.0" in resp.json()["error"]["message"]
        assert open(os.path.join(path, "run.sh")).read() == "exec sleep 100000\n"
        assert status(srv, "mysvc")["version"] == "v1.0.0"
        assert sv.running("mysvc")
    finally:
        sv.stop()



def test_executable_upgrade_rollback(start_server, tmp_root, github):
    base = os.path.join(tmp_root, "umw", "exe")
    path = os.path.join(base, "estimator")
    os.makedirs(path)
    with open(os.path.join(path, "release_info.json"), "w") as fh:
        json.dump({"project_name": "client", "project_owner": "acme", "version": "v3.7.0",
                   "asset_name": "estimator_linux"}, fh)
    with open(os.path.join(path, "estimator_linux"), "w") as fh:
        fh.write("#!/bin/sh\necho 3.7.0\n")
    os.chmod(os.path.join(path, "estimator_linux"), 0o755)
    github.release("acme/client", "v3.8.0", "estimator_linux", b"#!/bin/sh\necho 3.8.0\n")
    srv = start_server(config=um_config(web_section("estimator", path, "is_system_service: False",
                                                    kind="executable")),
                       data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    st = status(srv, "estimator")
    assert (st["configured_type"], st["version"], st["remote_version"], st["is_valid"]) == \
        ("executable", "v3.7.0", "v3.8.0", True)
    assert srv.result("POST", "/machine/update/upgrade", json={"name": "estimator"},
                      timeout=60) == "ok"
    exe = os.path.join(path, "estimator_linux")
    assert subprocess.run([exe], capture_output=True, text=True).stdout == "3.8.0\n"
    st = status(srv, "estimator")
    assert (st["version"], st["rollback_version"]) == ("v3.8.0", "v3.7.0")
    assert srv.result("POST", "/machine/update/rollback", json={"name": "estimator"}) == "ok"
    assert subprocess.run([exe], capture_output=True, text=True).stdout == "3.7.0\n"
    assert status(srv, "estimator")["version"] == "v3.7.0"
