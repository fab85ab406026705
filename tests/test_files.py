"""File manager: roots, listings, uploads, downloads, operations, metadata,
notifications, path traversal.  Real Klippy, real moonflask, real sockets."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import threading
import time

import pytest
import requests

from helpers import RpcError

SHARED = os.environ.get("MOONFLASK_SHARED", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared"))
GCODE_DIR = os.path.join(SHARED, "gcode")
SMALL = b"; small\nG28\nG1 X10 Y10 F3000\nM118 printed\n"
PAUSING = b"; pauses itself\nG28\nG1 X20 Y20 F3000\nPAUSE\nM118 resumed\n"


@pytest.fixture(scope="module")
def srv(start_server, printer_data):
    outside = os.path.join(printer_data, "outside")
    os.makedirs(outside, exist_ok=True)
    with open(os.path.join(outside, "secret.txt"), "w") as fh:
        fh.write("secret")
    return start_server(server_options="max_upload_size: 2")


@pytest.fixture(scope="module")
def ws(srv):
    client = srv.ws()
    client.call("server.connection.identify", {"client_name": "t", "version": "1",
                                               "type": "web", "url": "http://x"})
    return client


def upload(srv, name, data, **fields):
    return srv.post("/server/files/upload", files={"file": (name, data)}, data=fields,
                    timeout=60)


def gcodes(srv):
    return os.path.join(srv.data_path, "gcodes")


def leftovers(folder):
    return [p for p in glob.glob(os.path.join(folder, "**", ".*"), recursive=True)
            if ".mfupload-" in p or p.endswith((".mfpart", ".part", ".mfufp"))]


def filelist_notes(ws, timeout=3.0, count=1):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(ws.wait_notification("notify_filelist_changed",
                                            timeout=max(0.05, deadline - time.monotonic())))
        except (TimeoutError, Exception):
            break
    return [n["params"][0] for n in out]


def print_state(srv):
    return srv.result("GET", "/printer/objects/query?print_stats")["status"]["print_stats"]["state"]


def wait_state(srv, states, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = print_state(srv)
        if st in states:
            return st
        time.sleep(0.1)
    raise TimeoutError(st)


# -- roots and listings ---------------------------------------------------------
def test_roots_and_registered_directories(srv):
    roots = {r["name"]: r for r in srv.result("GET", "/server/files/roots")}
    assert roots["gcodes"]["permissions"] == "rw"
    assert roots["config"]["permissions"] == "rw"
    assert roots["logs"]["permissions"] == "r"
    assert roots["gcodes"]["path"] == os.path.join(srv.data_path, "gcodes")
    info = srv.result("GET", "/server/info")
    assert {"config", "logs", "gcodes"} <= set(info["registered_directories"])
    # the simulated Klippy's klipper_path has no config/ or docs/: warned, not registered
    if "config_examples" not in roots:
        assert any("(config_examples) is invalid" in w for w in info["warnings"])


def test_list_only_gcodes_and_skips_hidden(srv, ws):
    g = gcodes(srv)
    os.makedirs(os.path.join(g, "lst", ".hidden"), exist_ok=True)
    for name in ("lst/a.gcode", "lst/b.txt", "lst/.hidden/c.gcode", "lst/d.GCO"):
        with open(os.path.join(g, name), "wb") as fh:
            fh.write(SMALL)
    time.sleep(0.5)
    paths = {f["path"] for f in srv.result("GET", "/server/files/list")}
    assert "lst/a.gcode" in paths and "lst/d.GCO" in paths
    assert "lst/b.txt" not in paths and "lst/.hidden/c.gcode" not in paths
    entry = next(f for f in srv.result("GET", "/server/files/list") if f["path"] == "lst/a.gcode")
    assert set(entry) == {"path", "modified", "size", "permissions"}
    assert entry["size"] == len(SMALL) and entry["permissions"] == "rw"
    logs = srv.result("GET", "/server/files/list?root=logs")
    assert all(f["permissions"] == "r" for f in logs)
    r = srv.get("/server/files/list?root=bogus")
    assert r.status_code == 400 and "bogus" in r.json()["error"]["message"]


def test_get_directory(srv):
    res = srv.result("GET", "/server/files/directory?path=gcodes/lst&extended=true")
    assert set(res) == {"dirs", "files", "disk_usage", "root_info"}
    assert res["root_info"] == {"name": "gcodes", "permissions": "rw"}
    names = {f["filename"] for f in res["files"]}
    assert {"a.gcode", "b.txt"} <= names
    assert srv.get("/server/files/directory?path=gcodes/nope").status_code in (400, 404)


# -- uploads --------------------------------------------------------------------
def test_upload_create_and_notify(srv, ws):
    ws.drain()
    r = upload(srv, "up1.gcode", SMALL)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["action"] == "create_file" and body["print_started"] is False
    assert body["item"]["path"] == "up1.gcode" and body["item"]["root"] == "gcodes"
    assert body["item"]["size"] == len(SMALL)
    with open(os.path.join(gcodes(srv), "up1.gcode"), "rb") as fh:
        assert fh.read() == SMALL
    notes = filelist_notes(ws)
    assert notes and notes[0]["action"] == "create_file"
    assert notes[0]["item"]["path"] == "up1.gcode"
    assert not leftovers(gcodes(srv))


def test_upload_with_path_and_config_root(srv):
    r = upload(srv, "deep.gcode", SMALL, path="new/sub")
    assert r.status_code == 201 and r.json()["item"]["path"] == "new/sub/deep.gcode"
    r = upload(srv, "macro.cfg", b"[gcode_macro T]\ngcode: M118 t\n", root="config")
    assert r.status_code == 201
    assert "print_started" not in r.json()
    assert os.path.isfile(os.path.join(srv.data_path, "config", "macro.cfg"))
    assert upload(srv, "x.log", b"x", root="logs").status_code == 400


def test_upload_checksum(srv):
    good = hashlib.sha256(SMALL).hexdigest()
    assert upload(srv, "ck_ok.gcode", SMALL, checksum=good).status_code == 201
    r = upload(srv, "ck_bad.gcode", SMALL, checksum="0" * 64)
    assert r.status_code == 422
    assert not os.path.exists(os.path.join(gcodes(srv), "ck_bad.gcode"))
    assert not leftovers(gcodes(srv))


def test_upload_too_large(srv):
    r = upload(srv, "big.gcode", b"x" * (3 * 1024 * 1024))
    assert r.status_code == 413
    assert not os.path.exists(os.path.join(gcodes(srv), "big.gcode"))
    assert not leftovers(gcodes(srv))


def test_upload_cut_off_leaves_nothing(srv):
    boundary = "----cutoff"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"cut.gcode\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body_len = len(head) + 1024 * 1024 + 100
    s = socket.create_connection((srv.host, srv.port))
    s.sendall((f"POST /server/files/upload HTTP/1.1\r\nHost: x\r\nContent-Type: "
               f"multipart/form-data; boundary={boundary}\r\nContent-Length: {body_len}\r\n\r\n"
               ).encode() + head + b"G1 X1\n" * 50000)
    time.sleep(0.3)
    s.close()
    time.sleep(0.5)
    assert not os.path.exists(os.path.join(gcodes(srv), "cut.gcode"))
    assert not leftovers(gcodes(srv))
    assert srv.get("/server/files/metadata?filename=cut.gcode").status_code == 404
    assert srv.get("/server/info").status_code == 200


def test_concurrent_uploads_same_name(srv):
    a = b"; A\n" + b"G1 X1\n" * 100000
    b = b"; B\n" + b"G1 Y1\n" * 100000
    results = []

    def go(data):
        results.append(upload(srv, "same.gcode", data).status_code)
    threads = [threading.Thread(target=go, args=(d,)) for d in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201, 201]
    with open(os.path.join(gcodes(srv), "same.gcode"), "rb") as fh:
        assert fh.read() in (a, b)
    assert not leftovers(gcodes(srv))


def test_upload_and_print(srv):
    r = upload(srv, "toprint.gcode", SMALL, print="true")
    assert r.status_code == 201
    assert r.json()["print_started"] is True
    assert wait_state(srv, ("complete",)) == "complete"


def test_printing_file_is_protected(srv, ws):
    r = upload(srv, "pausing.gcode", PAUSING, print="true")
    assert r.json()["print_started"] is True
    wait_state(srv, ("paused", "printing"))
    try:
        with pytest.raises(RpcError) as err:
            ws.call("server.files.delete_file", {"path": "gcodes/pausing.gcode"})
        assert err.value.code == 403
        with pytest.raises(RpcError):
            ws.call("server.files.move", {"source": "gcodes/pausing.gcode",
                                          "dest": "gcodes/moved.gcode"})
        assert upload(srv, "pausing.gcode", SMALL).status_code == 403
        assert srv.delete("/server/files/gcodes/pausing.gcode").status_code == 403
        # copying it is allowed
        ws.call("server.files.copy", {"source": "gcodes/pausing.gcode",
                                      "dest": "gcodes/pausing_copy.gcode"})
        with open(os.path.join(gcodes(srv), "pausing.gcode"), "rb") as fh:
            assert fh.read() == PAUSING
    finally:
        srv.post("/printer/print/cancel")
        wait_state(srv, ("cancelled", "complete", "standby", "error"))
    ws.call("server.files.delete_file", {"path": "gcodes/pausing.gcode"})


# -- operations -----------------------------------------------------------------
def test_directory_ops_and_bundled_notifications(srv, ws):
    ws.drain()
    res = ws.call("server.files.post_directory", {"path": "gcodes/ops"})
    assert res["action"] == "create_dir" and res["item"]["path"] == "ops"
    for i in range(3):
        assert upload(srv, f"f{i}.gcode", SMALL, path="ops").status_code == 201
    # the last upload's notification may trail its HTTP response: wait for it
    ws.wait_notification("notify_filelist_changed",
                         predicate=lambda m: m["params"][0]["item"]["path"] == "ops/f2.gcode")
    ws.drain()
    res = ws.call("server.files.copy", {"source": "gcodes/ops", "dest": "gcodes/ops_copy"})
    assert res["action"] == "create_dir"
    notes = filelist_notes(ws, 1.5, 10)
    assert [n["action"] for n in notes] == ["create_dir"], notes
    res = ws.call("server.files.move", {"source": "gcodes/ops_copy", "dest": "gcodes/ops_moved"})
    assert res["action"] == "move_dir" and res["source_item"] == {"path": "ops_copy",
                                                                   "root": "gcodes"}
    notes = filelist_notes(ws, 1.5, 10)
    assert [n["action"] for n in notes] == ["move_dir"]
    assert srv.get("/server/files/metadata?filename=ops_moved/f1.gcode").status_code == 200
    with pytest.raises(RpcError):
        ws.call("server.files.delete_directory", {"path": "gcodes/ops_moved"})
    res = ws.call("server.files.delete_directory", {"path": "gcodes/ops_moved", "force": True})
    assert res["action"] == "delete_dir"
    notes = filelist_notes(ws, 1.5, 10)
    assert [n["action"] for n in notes] == ["delete_dir"]
    assert not os.path.exists(os.path.join(gcodes(srv), "ops_moved"))
    res = ws.call("server.files.move", {"source": "gcodes/ops/f0.gcode",
                                        "dest": "gcodes/renamed.gcode"})
    assert res["action"] == "move_file" and res["item"]["path"] == "renamed.gcode"
    res = ws.call("server.files.copy", {"source": "gcodes/renamed.gcode",
                                        "dest": "gcodes/ops/f1.gcode"})
    assert res["action"] == "modify_file"
    res = ws.call("server.files.zip", {"dest": "config/ops.zip", "items": ["gcodes/ops"]})
    assert res["action"] == "zip_files" and res["destination"]["path"] == "ops.zip"
    import zipfile
    with zipfile.ZipFile(os.path.join(srv.data_path, "config", "ops.zip")) as zf:
        assert sorted(zf.namelist()) == ["gcodes/ops/f1.gcode", "gcodes/ops/f2.gcode"]
    r = srv.delete("/server/files/gcodes/renamed.gcode")
    assert r.status_code == 200 and r.json()["result"]["action"] == "delete_file"
    assert srv.delete("/server/files/gcodes/renamed.gcode").status_code == 400


def test_download_range_and_headers(srv):
    upload(srv, "dl.gcode", SMALL)
    r = srv.get("/server/files/gcodes/dl.gcode")
    assert r.status_code == 200 and r.content == SMALL
    assert "attachment" in r.headers.get("Content-Disposition", "")
    r = srv.get("/server/files/gcodes/dl.gcode", headers={"Range": "bytes=2-8"})
    assert r.status_code == 206 and r.content == SMALL[2:9]
    assert srv.get("/server/files/gcodes/nope.gcode").status_code == 404
    assert srv.get("/server/files/moonraker.log").status_code == 200


def test_on_disk_changes_are_announced(srv, ws):
    g = gcodes(srv)
    ws.drain()
    with open(os.path.join(g, "disk.gcode"), "wb") as fh:
        fh.write(SMALL)
    n = filelist_notes(ws)
    assert n and n[0]["action"] == "create_file" and n[0]["item"]["path"] == "disk.gcode"
    with open(os.path.join(g, "disk.gcode"), "ab") as fh:
        fh.write(b"M118 more\n")
    n = filelist_notes(ws)
    assert n and n[0]["action"] == "modify_file"
    os.mkdir(os.path.join(g, "diskdir"))
    n = filelist_notes(ws)
    assert n and n[0]["action"] == "create_dir"
    os.rename(os.path.join(g, "disk.gcode"), os.path.join(g, "diskdir", "disk.gcode"))
    n = filelist_notes(ws)
    assert n and n[0]["action"] == "move_file"
    assert n[0]["source_item"] == {"path": "disk.gcode", "root": "gcodes"}
    assert n[0]["item"]["path"] == "diskdir/disk.gcode"
    os.unlink(os.path.join(g, "diskdir", "disk.gcode"))
    n = filelist_notes(ws)
    assert n and n[0]["action"] == "delete_file"
    paths = {f["path"] for f in srv.result("GET", "/server/files/list")}
    assert "diskdir/disk.gcode" not in paths


# -- path traversal ---------------------------------------------------------------
BAD_PATHS = ["../outside/secret.txt", "../../etc/passwd", "/etc/passwd", "a/../../x",
             "x\x00y.gcode", "%2e%2e/outside/secret.txt", "a" * 300 + ".gcode",
             "..\\..\\outside\\secret.txt"]


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_traversal_table(srv, ws, bad):
    before = sorted(os.listdir(srv.data_path))
    secret = os.path.join(srv.data_path, "outside", "secret.txt")
    calls = [
        ("server.files.list", {"root": bad}),
        ("server.files.metadata", {"filename": bad}),
        ("server.files.metascan", {"filename": bad}),
        ("server.files.get_directory", {"path": "gcodes/" + bad}),
        ("server.files.get_directory", {"path": bad}),
        ("server.files.post_directory", {"path": "gcodes/" + bad}),
        ("server.files.delete_directory", {"path": "gcodes/" + bad, "force": True}),
        ("server.files.delete_file", {"path": "gcodes/" + bad}),
        ("server.files.move", {"source": "gcodes/" + bad, "dest": "gcodes/stolen.txt"}),
        ("server.files.move", {"source": "gcodes/dl.gcode", "dest": "gcodes/" + bad}),
        ("server.files.copy", {"source": "gcodes/" + bad, "dest": "gcodes/stolen.txt"}),
        ("server.files.copy", {"source": "gcodes/dl.gcode", "dest": "config/" + bad}),
        ("server.files.zip", {"dest": "config/t.zip", "items": ["gcodes/" + bad]}),
        ("server.files.zip", {"dest": "config/" + bad, "items": ["gcodes/dl.gcode"]}),
    ]
    for method, params in calls:
        with pytest.raises(RpcError) as err:
            res = ws.call(method, params)
            pytest.fail(f"{method} {params} -> {res}")
        assert err.value.code in (400, 403, 404, -32601), (method, params, err.value)
        assert srv.data_path not in err.value.message
    try:   # a missing file has no thumbnails: [] (as Moonraker), or refused
        assert ws.call("server.files.thumbnails", {"filename": bad}) == []
    except RpcError as err:
        assert err.code in (400, 403)
    enc = requests.utils.quote(bad, safe="")
    for method, path in [("GET", f"/server/files/gcodes/{enc}"),
                         ("DELETE", f"/server/files/gcodes/{enc}"),
                         ("GET", f"/server/files/list?root={enc}"),
                         ("GET", f"/server/files/directory?path=gcodes/{enc}"),
                         ("GET", f"/server/files/metadata?filename={enc}")]:
        r = requests.request(method, srv.url + path, timeout=10)
        assert r.status_code in (400, 403, 404), (method, path, r.status_code)
        assert srv.data_path not in r.text
    # a literal name (quoted-string unescaping turns ..\\ into ..), harmless inside the root
    literal = bad.startswith("%2e") or "\\" in bad
    r = upload(srv, bad, b"G28\n")
    assert r.status_code in (400, 403) or (literal and r.status_code == 201), r.text
    r = upload(srv, "ok_name.gcode", b"G28\n", path=bad)
    assert r.status_code in (400, 403) or (literal and r.status_code == 201), r.text
    assert sorted(os.listdir(srv.data_path)) == before
    assert os.path.exists(secret)
    assert not os.path.exists(os.path.join(gcodes(srv), "stolen.txt"))
    assert not os.path.exists(os.path.join(srv.data_path, "x"))


def test_owner_symlink_followed_but_delete_removes_link_only(srv, ws):
    link = os.path.join(gcodes(srv), "usb")
    target = os.path.join(srv.data_path, "outside")
    with open(os.path.join(target, "usbprint.gcode"), "wb") as fh:
        fh.write(SMALL)
    os.symlink(target, link)
    time.sleep(0.3)
    paths = {f["path"] for f in srv.result("GET", "/server/files/list")}
    assert "usb/usbprint.gcode" in paths
    assert srv.get("/server/files/gcodes/usb/usbprint.gcode").content == SMALL
    ws.call("server.files.delete_directory", {"path": "gcodes/usb", "force": True})
    assert not os.path.lexists(link)
    assert os.path.exists(os.path.join(target, "secret.txt"))


# -- metadata ----------------------------------------------------------------------
GCODE_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(GCODE_DIR, "*.gcode")))
VOLATILE = {"modified", "uuid", "print_start_time", "job_id", "filename"}


@pytest.mark.parametrize("name", GCODE_FILES)
def test_metadata_matches_reference(srv, name):
    with open(os.path.join(GCODE_DIR, name), "rb") as fh:
        data = fh.read()
    r = upload(srv, name, data, path="meta")
    assert r.status_code == 201
    md = srv.result("GET", f"/server/files/metadata?filename=meta/{name}")
    with open(os.path.join(GCODE_DIR, name[:-6] + ".metadata.json")) as fh:
        ref = json.load(fh)["metadata"]
    assert md["filename"] == f"meta/{name}"
    assert md["size"] == len(data)
    for key, value in ref.items():
        if key in VOLATILE:
            continue
        if key in ("slicer_version", "estimated_time", "filament_total",
                   "first_layer_height", "object_height") and name.startswith("cura_"):
            continue  # Moonraker takes CuraEngine's unfilled placeholders (README notes)
        assert key in md, key
        assert md[key] == value, (key, md[key], value)
    thumbs = srv.result("GET", f"/server/files/thumbnails?filename=meta/{name}")
    assert len(thumbs) == len(ref.get("thumbnails", []))
    for th in thumbs:
        got = srv.get(f"/server/files/gcodes/{th['thumbnail_path']}")
        assert got.status_code == 200
        ref_thumb = os.path.join(GCODE_DIR, ".thumbs",
                                 os.path.basename(th["thumbnail_path"]))
        with open(ref_thumb, "rb") as fh:
            assert got.content == fh.read()


def test_metadata_missing_and_cached(srv):
    r = srv.get("/server/files/metadata?filename=nope.gcode")
    assert r.status_code == 404
    upload(srv, "cached.gcode", SMALL)
    a = srv.result("GET", "/server/files/metadata?filename=cached.gcode")
    assert a["size"] == len(SMALL) and a["filename"] == "cached.gcode"
    b = srv.result("GET", "/server/files/metascan?filename=cached.gcode")
    assert b["size"] == a["size"]
