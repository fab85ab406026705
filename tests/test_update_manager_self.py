"""moonflask updating itself: a moonflask run from a git clone of this
checkout's tracked files (its own "origin" made by the test) upgrades its
``moonraker`` entry, restarts into the new code and reports the new version."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import requests
from helpers import REPO, Moonflask
from um_helpers import Origin, git, head, status, um_config, wait_initialized


class CopyMoonflask(Moonflask):
    """A Moonflask started from another checkout (``code``)."""

    def __init__(self, code: str, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.code = code

    def start(self, timeout: float = 20.0) -> "CopyMoonflask":
        out = open(os.path.join(self.data_path, "moonflask.stdout"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "moonflask", "-d", self.data_path],
                                     cwd=self.code, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                requests.get(self.url + "/server/info", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        raise TimeoutError(self.output())


def test_self_update_restarts_into_new_code(printer, tmp_root):
    base = os.path.join(tmp_root, "umself")
    origin = Origin(base)
    # the tracked files as they are now (uncommitted edits included)
    for name in git(REPO, "ls-files", "-z").split("\0"):
        src = os.path.join(REPO, name)
        if name and os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(origin.work, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(origin.work, name))
    first = origin.commit({"ORIGIN_NOTE": "first\n"}, tag="v1.0.0")
    code = origin.clone(os.path.join(base, "code"))
    new = origin.commit({"moonflask/_update_marker.py": "MARKER = 2\n"})
    srv = CopyMoonflask(code, os.path.join(base, "data"), printer.socket_path,
                        um_config(f"[update_manager moonraker]\norigin: {origin.url}\n"))
    try:
        srv.start()
        wait_initialized(srv)
        st = status(srv, "moonraker")
        assert st["current_hash"] == first and st["remote_hash"] == new, st
        assert st["is_valid"], st["warnings"]
        assert srv.result("POST", "/machine/update/moonraker", timeout=60) == "ok"
        assert head(code) == new
        # the process re-executed itself (same pid) into the new checkout
        deadline = time.monotonic() + 30
        log = os.path.join(base, "data", "logs", "moonraker.log")
        while open(log).read().count("listening on") < 2:
            assert time.monotonic() < deadline, "moonflask did not restart"
            time.sleep(0.1)
        st = wait_initialized(srv)["version_info"]["moonraker"]
        assert st["current_hash"] == new and st["rollback_version"] == "v1.0.0-0"
        assert srv.proc.poll() is None
        assert not os.path.exists(os.path.join(base, "data", "update_manager",
                                               "journal-moonraker.json"))
        assert git(code, "status", "--porcelain", "--untracked-files=no") == ""
    finally:
        srv.stop()
