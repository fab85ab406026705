"""Helpers for the update manager tests: real git repositories made by the
test (a bare "origin" with tagged releases and a managed clone), and a
moonflask configured to manage them."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import requests

import services
from services import SUPERVISORD  # noqa: F401  (re-exported for the tests)

GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="Test Author", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="Test Author", GIT_COMMITTER_EMAIL="t@example.com",
               LC_ALL="C")


def git(cwd: str, *args: str, check: bool = True) -> str:
    """Run git in ``cwd``; returns stdout (raises on failure when ``check``)."""
    res = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True,
                         text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {res.stderr}")
    return res.stdout


class Origin:
    """A bare origin repository and a work clone the test pushes from."""

    def __init__(self, base: str) -> None:
        os.makedirs(base, exist_ok=True)
        self.base = base
        self.url = os.path.join(base, "origin.git")
        self.work = os.path.join(base, "author")
        git(base, "init", "-q", "--bare", "-b", "master", self.url)
        git(base, "clone", "-q", self.url, self.work)
        self.n = 0

    def commit(self, files: dict[str, str] | None = None, tag: str | None = None,
               push: bool = True) -> str:
        """Commit ``files`` (default: a changed app.py), tag it (annotated),
        push; returns the commit hash."""
        self.n += 1
        for name, text in (files or {"app.py": f"VERSION = {self.n}\n"}).items():
            full = os.path.join(self.work, name)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as fh:
                fh.write(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", f"Change {self.n}", "-m", f"Body of change {self.n}.")
        if tag:
            git(self.work, "tag", "-a", tag, "-m", f"Release {tag}")
        if push:
            git(self.work, "push", "-q", "--tags", "origin", "master")
        return git(self.work, "rev-parse", "HEAD").strip()

    def clone(self, dest: str, at: str | None = None) -> str:
        """Clone the origin to ``dest`` (reset to ``at``); returns ``dest``."""
        git(self.base, "clone", "-q", self.url, dest)
        if at:
            git(dest, "reset", "-q", "--hard", at)
        return dest


def releases(base: str) -> tuple[Origin, dict[str, str]]:
    """An origin with v0.1.0, v0.2.0, v0.3.0-beta.1 and one untagged commit
    after it; returns it and ``{tag or "dev": hash}``."""
    origin = Origin(base)
    hashes = {"v0.1.0": origin.commit(tag="v0.1.0"), "v0.2.0": origin.commit(tag="v0.2.0"),
              "v0.3.0-beta.1": origin.commit(tag="v0.3.0-beta.1"), "dev": origin.commit()}
    return origin, hashes


def ext_section(name: str, path: str, origin: str, extra: str = "") -> str:
    """A ``[update_manager NAME]`` git_repo section."""
    return (f"[update_manager {name}]\ntype: git_repo\npath: {path}\norigin: {origin}\n"
            f"is_system_service: False\n{extra}\n")


def um_config(*sections: str, main: str = "") -> str:
    """moonraker.conf text: no service provider, no system updates, ``sections``."""
    return ("[machine]\nprovider: none\n\n[update_manager]\nenable_system_updates: False\n"
            f"{main}\n" + "\n".join(sections))


def wait_initialized(srv: Any, timeout: float = 60.0) -> dict:
    """Poll until the update manager finished initialising; returns the
    status."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            resp = srv.post("/machine/update/refresh", json={"name": "moonraker"})
            last = resp.text
            if resp.status_code == 200:
                return resp.json()["result"]
        except requests.RequestException as err:
            last = str(err)
        time.sleep(0.2)
    raise TimeoutError(f"update manager not initialised: {last}")


def status(srv: Any, name: str | None = None) -> dict:
    """``machine.update.status`` (one updater's entry when ``name``)."""
    res = srv.result("GET", "/machine/update/status")
    return res["version_info"][name] if name else res


def head(path: str) -> str:
    """HEAD's commit hash in ``path``."""
    return git(path, "rev-parse", "HEAD").strip()


def fsck_clean(path: str) -> bool:
    """True when ``git fsck`` finds nothing wrong in ``path``."""
    res = subprocess.run(["git", "fsck", "--no-dangling"], cwd=path, capture_output=True,
                         text=True)
    return res.returncode == 0 and "error" not in res.stderr.lower()


def update_messages(ws: Any, timeout: float = 60.0) -> list[dict]:
    """``notify_update_response`` params up to the one with ``complete: true``."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        msg = ws.wait_notification("notify_update_response",
                                   timeout=max(0.1, deadline - time.monotonic()))
        out.append(msg["params"][0])
        if msg["params"][0]["complete"]:
            return out


PROGRAM = """\
command=/bin/sh {path}/run.sh
startsecs=1
startretries=0
stopwaitsecs=2
"""


class Supervisord:
    """A real supervisord (PyPI ``supervisor``) in ``folder`` running program
    ``name`` as ``/bin/sh PATH/run.sh``; waits until it runs."""

    def __init__(self, folder: str, name: str, path: str) -> None:
        os.makedirs(folder)
        self.folder = folder
        self.conf = services.write_supervisor_conf(folder, {name: PROGRAM.format(path=path)})
        self.proc = services.start_supervisord(self.conf)
        deadline = time.monotonic() + 20
        while not self.running(name):
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"supervisord did not start {name}")
            time.sleep(0.2)

    def running(self, name: str) -> bool:
        """True when supervisorctl reports ``name`` RUNNING."""
        return services.ctl_status(self.conf).get(name, ("",))[0] == "RUNNING"

    def stop(self) -> None:
        """Stop supervisord and its programs; remove the folder."""
        services.stop_process(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)
