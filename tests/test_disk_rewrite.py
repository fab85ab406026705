"""Issue 10 item 9: a gcode file rewritten in place by another program (open
the existing file, truncate, write, close) is announced as ``modify_file``,
as the reference does (tests/reference/conf_c_disk_rewrite_in_place_*.json,
recorded by scripts/capture_conf_c_reference.py)."""
from __future__ import annotations

import os
import time

import pytest

from shapes import reference, shape_diff

SMALL = "; small test file\nG28\nG1 X10 Y10 F3000\nM118 printed\n"


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server()


def filelist_changes(ws, path, timeout=20.0):
    """notify_filelist_changed payloads about ``path`` until none came for 1.5 s."""
    out = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < deadline:
        if quiet_until is not None and time.monotonic() > quiet_until:
            break
        try:
            msg = ws.notifications.get(timeout=0.2)
        except Exception:
            continue
        if msg.get("method") == "notify_filelist_changed" and \
                msg["params"][0]["item"]["path"] == path:
            out.append(msg["params"][0])
            quiet_until = time.monotonic() + 1.5
    return out


@pytest.mark.parametrize("mode", ["w", "r+"])
def test_rewrite_in_place_is_modify_file(srv, printer_data, mode):
    name = "inplace_%s.gcode" % mode.replace("+", "plus")
    path = os.path.join(printer_data, "gcodes", name)
    ws = srv.ws()
    with open(path, "w") as fh:
        fh.write(SMALL)
    created = filelist_changes(ws, name)
    assert [c["action"] for c in created] == ["create_file"]
    text = SMALL + "M118 rewritten in place\n"
    with open(path, mode) as fh:
        fh.truncate(0)
        fh.write(text)
    changes = filelist_changes(ws, name)
    assert [c["action"] for c in changes] == ["modify_file"], changes
    ref = reference("conf_c_disk_rewrite_in_place_" + mode.replace("+", "plus"))
    ref_change = ref["notifications"][0]["params"][0]
    assert ref_change["action"] == "modify_file"
    assert shape_diff(ref_change, changes[0]) == []
    assert changes[0]["item"]["size"] == len(text)
    meta = srv.result("GET", "/server/files/metadata?filename=" + name)
    assert meta["size"] == len(text)


def test_created_then_rewritten_at_once(srv, printer_data):
    """A file written and at once rewritten: a create_file, and a
    modify_file unless both writes were read at once (the reference's
    recordings show both outcomes); two quick rewrites: one or two
    modify_file."""
    ref = reference("conf_c_disk_create_then_rewrite")["notifications"]
    assert [n["params"][0]["action"] for n in ref] in (["create_file"],
                                                       ["create_file", "modify_file"])
    path = os.path.join(printer_data, "gcodes", "quick.gcode")
    ws = srv.ws()
    with open(path, "w") as fh:
        fh.write(SMALL)
    with open(path, "r+") as fh:
        fh.truncate(0)
        fh.write(SMALL + "M118 at once\n")
    changes = filelist_changes(ws, "quick.gcode")
    # a busy machine may let the watcher read between the two writes: then
    # the rewrite is a modify_file of its own
    assert [c["action"] for c in changes] in (["create_file"], ["create_file", "modify_file"])
    assert shape_diff(ref[0]["params"][0], changes[0]) == []
    assert changes[-1]["item"]["size"] == len(SMALL + "M118 at once\n")
    ref = reference("conf_c_disk_rewrite_twice")["notifications"]
    assert ref and {n["params"][0]["action"] for n in ref} == {"modify_file"}  # 1 or 2
    for i in range(2):
        with open(path, "r+") as fh:
            fh.truncate(0)
            fh.write(SMALL + "M118 twice %d\n" % i)
    changes = filelist_changes(ws, "quick.gcode")
    assert changes and {c["action"] for c in changes} == {"modify_file"}
    assert changes[-1]["item"]["size"] == len(SMALL + "M118 twice 1\n")


def test_rewritten_and_held_open(srv, printer_data):
    """As the reference: announced when the writer closes the file."""
    ref = reference("conf_c_disk_rewrite_held_open")
    assert ref["notifications"] == []
    assert [n["params"][0]["action"] for n in ref["after_close"]] == ["modify_file"]
    path = os.path.join(printer_data, "gcodes", "held.gcode")
    ws = srv.ws()
    with open(path, "w") as fh:
        fh.write(SMALL)
    assert [c["action"] for c in filelist_changes(ws, "held.gcode")] == ["create_file"]
    fh = open(path, "r+")
    try:
        fh.truncate(0)
        fh.write(SMALL + "M118 held open\n")
        fh.flush()
        assert filelist_changes(ws, "held.gcode", timeout=3.0) == []
    finally:
        fh.close()
    changes = filelist_changes(ws, "held.gcode")
    assert [c["action"] for c in changes] == ["modify_file"], changes
    assert shape_diff(ref["after_close"][0]["params"][0], changes[0]) == []


@pytest.mark.parametrize("tag,tmpname", [("hidden", ".inplace.gcode.tmp1"),
                                         ("visible", "inplace.gcode.tmp2")])
def test_saved_through_a_renamed_temporary_file(srv, printer_data, tag, tmpname):
    """Editors and sync tools write a temporary file and rename it over the
    file.  As the reference: a hidden temporary file is not announced (only
    the move_file); a visible one may be announced first (create_file, with
    the size it had: the reference does so when it sees the file before the
    rename), then the move_file."""
    ref = [n["params"][0] for n in reference("conf_c_disk_replace_" + tag)["notifications"]]
    gcodes = os.path.join(printer_data, "gcodes")
    path = os.path.join(gcodes, "inplace.gcode")
    ws = srv.ws()
    with open(path, "w") as fh:
        fh.write(SMALL)
    filelist_changes(ws, "inplace.gcode")
    text = SMALL + "M118 replaced %s\n" % tag
    with open(os.path.join(gcodes, tmpname), "w") as fh:
        fh.write(text)
    os.replace(os.path.join(gcodes, tmpname), path)
    changes = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (
            changes and changes[-1]["action"] == "move_file"):
        try:
            msg = ws.notifications.get(timeout=0.5)
        except Exception:
            continue
        if msg.get("method") == "notify_filelist_changed":
            changes.append(msg["params"][0])
    time.sleep(1.0)
    changes += [n["params"][0] for n in ws.drain() if n.get("method") == "notify_filelist_changed"]
    expected = [("move_file", "inplace.gcode")]
    if tag == "visible":
        assert [(c["action"], c["item"]["path"]) for c in ref][-1] == expected[0]
        assert [(c["action"], c["item"]["path"]) for c in changes] in (
            expected, [("create_file", tmpname)] + expected)
    else:
        assert [(c["action"], c["item"]["path"]) for c in ref] == expected
        assert [(c["action"], c["item"]["path"]) for c in changes] == expected
    for ours in changes:
        assert shape_diff(ref[-1]["item"], ours["item"]) == []
        assert ours["item"]["size"] == len(text)
    assert changes[-1]["source_item"] == {"path": tmpname, "root": "gcodes"}


def test_hard_link_then_rewrite(srv, printer_data):
    """As the reference: a hard link (nothing written) is not announced; the
    first write through it is its create_file."""
    ref = reference("conf_c_disk_hard_link")
    assert ref["notifications"] == []
    assert [(n["params"][0]["action"], n["params"][0]["item"]["path"])
            for n in ref["after_rewrite"]] == [("create_file", "linked.gcode")]
    gcodes = os.path.join(printer_data, "gcodes")
    path = os.path.join(gcodes, "tolink.gcode")
    ws = srv.ws()
    with open(path, "w") as fh:
        fh.write(SMALL)
    filelist_changes(ws, "tolink.gcode")
    os.link(path, os.path.join(gcodes, "linked.gcode"))
    assert filelist_changes(ws, "linked.gcode", timeout=3.0) == []
    with open(os.path.join(gcodes, "linked.gcode"), "r+") as fh:
        fh.truncate(0)
        fh.write(SMALL + "M118 linked\n")
    changes = filelist_changes(ws, "linked.gcode")
    assert [c["action"] for c in changes] == ["create_file"]
    assert shape_diff(ref["after_rewrite"][0]["params"][0], changes[0]) == []
