"""The ``python`` updater: a Python application pip-installed in its own
virtualenv, from a package index or from a git URL.

The source is detected from the installed distribution's metadata: a
``direct_url.json`` with ``vcs_info`` means a git install (``pip install
git+URL@REF``), anything else an index install.  Index: the newest version
comes from ``pip install -U --dry-run --no-deps --report -`` (``--pre`` on
the beta channel).  Git: ``git ls-remote`` of the URL gives the newest
``vX.Y.Z`` tag (stable), tag with a suffix (beta) or ``primary_branch``
commit (dev).  Upgrades and rollbacks run pip (its index configuration,
``PIP_*`` environment included) and restart ``managed_services``; they are
journaled like every update (a crash mid-pip re-runs the install at start).
Spec: update_manager.md "Python Package Status", configuration.md "Python
Application Configuration".
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from gevent import subprocess

from . import journal as jn
from .base import BaseUpdater, Reporter, UpdateError
from .git_cmd import GitError, run_git

log = logging.getLogger(__name__)

PROBE = """import importlib.metadata as m, json, sys
d = m.distribution(sys.argv[1])
print(json.dumps({"version": d.version, "direct_url": d.read_text("direct_url.json"),
                  "urls": d.metadata.get_all("Project-URL") or [],
                  "home": d.metadata.get("Home-page")}))
"""
TAG_RE = re.compile(r"^v?\d+\.\d+\.\d+(?:[-.]?[0-9A-Za-z.]+)?$")
STABLE_RE = re.compile(r"^v?\d+\.\d+\.\d+$")


def _key(tag: str) -> tuple:
    core = re.match(r"^v?(\d+)\.(\d+)\.(\d+)(.*)$", tag)
    if not core:
        return (0,)
    nums = tuple(int(x) for x in core.group(1, 2, 3))
    return nums + ((1,) if not core.group(4) else (0, core.group(4)))


class PythonUpdater(BaseUpdater):
    """A ``python`` updater.

    Raises:
        ConfigError: ``virtualenv`` missing.
    """

    configured_type = "python"
    prefix = "Python Package"

    def __init__(self, manager: Any, name: str, section: Any) -> None:
        super().__init__(manager, name, section, "stable")
        self.virtualenv = os.path.expanduser(section.get("virtualenv"))
        self.project_name = section.get("project_name", name)
        self.package = re.sub(r"\[.*\]$", "", self.project_name).strip()
        self.primary_branch = section.get("primary_branch", None)
        is_service = section.getboolean("is_system_service", True)
        self.managed_services = section.getlist(
            "managed_services", [name] if is_service else [], separator=None) or []
        self.version = "?"
        self.remote_version = "?"
        self.current_hash = "not-specified"
        self.remote_hash = "?"
        self.git_url: str | None = None
        self.remote_ref: str | None = None
        self.owner, self.repo_name, self.changelog_url = "?", "?", ""
        self.warnings: list[str] = []
        self.anomalies: list[str] = []

    @property
    def python(self) -> str:
        """The virtualenv's interpreter."""
        return os.path.join(self.virtualenv, "bin", "python")

    def _run(self, *args: str) -> tuple[int, str, str]:
        res = subprocess.run([self.python, *args], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=600)
        return res.returncode, res.stdout, res.stderr

    # -- status -------------------------------------------------------------
    def refresh(self) -> None:
        """Read the installed distribution and the newest available version."""
        self.warnings, self.anomalies = [], []
        try:
            self._refresh()
        except (UpdateError, GitError, OSError, ValueError) as err:
            self.warnings.append(str(err))
        finally:
            self.mark_refreshed()
        note = self.manager.journal.get(self.name).get("recovery_note")
        if note:
            self.anomalies.append(note)

    def _refresh(self) -> None:
        if not os.path.exists(self.python):
            raise UpdateError(f"No python in virtualenv {self.virtualenv}")
        rc, out, err = self._run("-c", PROBE, self.package)
        if rc != 0:
            raise UpdateError(f"Package {self.package} is not installed in {self.virtualenv}")
        info = json.loads(out)
        self.version = info["version"]
        direct = json.loads(info["direct_url"]) if info.get("direct_url") else {}
        vcs = direct.get("vcs_info") or {}
        self.git_url = direct.get("url") if vcs.get("vcs") == "git" else None
        self.current_hash = vcs.get("commit_id", "not-specified")
        url = self.git_url or info.get("home") or next(
            (u.split(",", 1)[1].strip() for u in info.get("urls", [])
             if u.lower().startswith(("repository", "source", "homepage"))), "")
        match = re.search(r"github\.com[/:]([^/]+)/([^/.]+)", url or "")
        self.owner, self.repo_name = (match.group(1), match.group(2)) if match else ("?", "?")
        self.changelog_url = next((u.split(",", 1)[1].strip() for u in info.get("urls", [])
                                   if u.lower().startswith("changelog")), "")
        if self.git_url:
            self._remote_from_git()
        else:
            self._remote_from_index()

    def _remote_from_index(self) -> None:
        self.channel_invalid = self.channel == "dev"
        if self.channel_invalid:
            self.warnings.append("The dev channel needs a package installed from git")
        args = ["-m", "pip", "install", "-U", "--quiet", "--dry-run", "--no-deps",
                "--report", "-", "--disable-pip-version-check"]
        if self.channel == "beta":
            args.append("--pre")
        rc, out, err = self._run(*args, self.package)
        if rc != 0:
            raise UpdateError(f"pip could not query the index: {err.strip()[-300:]}")
        report = json.loads(out or "{}")
        items = report.get("install") or []
        self.remote_version = items[0]["metadata"]["version"] if items else self.version
        self.remote_hash = "update-available" if self.remote_version != self.version \
            else self.current_hash

    def _remote_from_git(self) -> None:
        url = self.git_url or ""
        clean = url[4:] if url.startswith("git+") else url
        refs = run_git(None, "ls-remote", "--tags", "--heads", clean, timeout=120)
        tags: dict[str, str] = {}
        heads: dict[str, str] = {}
        for line in refs.splitlines():
            sha, _, ref = line.partition("\t")
            if ref.startswith("refs/tags/"):
                name = ref[10:]
                if name.endswith("^{}"):
                    tags[name[:-3]] = sha  # peeled: the commit
                else:
                    tags.setdefault(name, sha)
            elif ref.startswith("refs/heads/"):
                heads[ref[11:]] = sha
        if self.channel == "dev":
            branch = self.primary_branch or "master"
            if branch not in heads:
                raise UpdateError(f"Branch {branch} not found at {clean}")
            self.remote_ref, self.remote_hash = branch, heads[branch]
            self.remote_version = self.remote_hash[:8]
        else:
            pattern = STABLE_RE if self.channel == "stable" else TAG_RE
            cands = [t for t in tags if pattern.match(t)]
            if not cands:
                raise UpdateError(f"No {self.channel} release tag at {clean}")
            best = max(cands, key=_key)
            self.remote_ref, self.remote_hash = best, tags[best]
            self.remote_version = best.lstrip("v")

    @property
    def is_valid(self) -> bool:
        """Updates possible: package found, no warnings."""
        return not self.warnings and self.version != "?"

    def status(self) -> dict[str, Any]:
        """The Python Package Status object (the reference's key order)."""
        st = self.manager.journal.get(self.name)
        return {
            "channel": self.channel, "debug_enabled": bool(self.server.debug),
            "channel_invalid": self.channel_invalid, "is_valid": self.is_valid,
            "configured_type": "python", "info_tags": list(self.info_tags),
            "detected_type": "python_package", "name": self.name,
            "branch": self.primary_branch, "owner": self.owner, "repo_name": self.repo_name,
            "version": self.version, "remote_version": self.remote_version,
            "rollback_version": st.get("rollback_version", "?"),
            "current_hash": self.current_hash, "remote_hash": self.remote_hash,
            "is_dirty": False, "changelog_url": self.changelog_url,
            "full_version_string": self.version, "pristine": True,
            "warnings": list(self.warnings),
            "anomalies": list(self.anomalies) if self.report_anomalies else [],
        }

    # -- updates --------------------------------------------------------------
    def _spec(self, ref: str | None, version: str | None) -> str:
        if self.git_url:
            url = self.git_url if self.git_url.startswith("git+") else "git+" + self.git_url
            # older pips (packaging < 22) want a host in file URLs
            url = url.replace("git+file:///", "git+file://localhost/", 1)
            return f"{self.project_name} @ {url}@{ref}"
        return f"{self.project_name}=={version}" if version else self.project_name

    def _pip(self, spec: str, rep: Reporter) -> None:
        args = [self.python, "-m", "pip", "install", "-U", "--disable-pip-version-check"]
        if self.channel == "beta" and not self.git_url:
            args.append("--pre")
        self.manager.run_streaming(args + [spec], rep)

    def upgrade(self, rep: Reporter) -> str:
        """pip install the newest version; services restarted, a failing one
        rolls back.  Raises UpdateError."""
        if not self.is_valid:
            raise UpdateError(f"{self.prefix} {self.name}: update refused: "
                              f"{'; '.join(self.warnings)}")
        if self.remote_version == self.version and (
                not self.git_url or self.remote_hash == self.current_hash):
            return f"{self.prefix} {self.name}: already up to date"
        spec = self._spec(self.remote_ref, self.remote_version)
        back = self._spec(self.current_hash if self.git_url else None, self.version)
        return self._install(rep, "upgrade", spec, back, self.remote_version)

    def _install(self, rep: Reporter, op: str, spec: str, back: str, to_version: str) -> str:
        rec = self.manager.journal.begin(self.name, op, from_version=self.version,
                                         to_version=to_version, spec=spec, back=back,
                                         proc_id=rep.proc_id)
        rep(f"{self.prefix} {self.name}: Updating to {to_version}...")
        try:
            self._pip(spec, rep)
        except UpdateError as err:
            rep(f"{self.prefix} {self.name}: pip failed, reinstalling {self.version}")
            self._pip(back, rep)
            self.manager.journal.finish(rec)
            raise UpdateError(f"{self.prefix} {self.name}: {err}") from None
        self.manager.journal.step(rec, jn.DEPS_DONE)
        self.manager.journal.put(self.name, rollback_version=self.version, rollback_spec=back,
                                 recovery_note=None)
        failed = self._restart_services(rep)
        if failed:
            rep(f"{self.prefix} {self.name}: service {failed} did not come back; "
                f"rolling back to {self.version}")
            self._pip(back, rep)
            self._restart_services(rep)
            note = (f"Rolled back to {self.version}: service {failed} did not start after "
                    f"the update to {to_version}")
            self.manager.journal.put(self.name, recovery_note=note)
            self.manager.journal.finish(rec)
            raise UpdateError(f"{self.prefix} {self.name}: {note}")
        self.manager.journal.finish(rec)
        return f"{self.prefix} {self.name}: Update Finished..."

    def rollback(self, rep: Reporter) -> str:
        """pip install the version before the last update."""
        st = self.manager.journal.get(self.name)
        if not st.get("rollback_spec"):
            raise UpdateError(f"{self.prefix} {self.name}: no rollback version available")
        back = self._spec(self.current_hash if self.git_url else None, self.version)
        self._install(rep, "rollback", st["rollback_spec"], back, st["rollback_version"])
        return f"{self.prefix} {self.name}: Rollback Complete"

    def recover(self, rep: Reporter, hard: bool) -> str:
        """Reinstall the current version (``--force-reinstall`` when hard)."""
        spec = self._spec(self.current_hash if self.git_url else None, self.version)
        cmd = [self.python, "-m", "pip", "install", "--disable-pip-version-check"]
        if hard:
            cmd.append("--force-reinstall")
        self.manager.run_streaming(cmd + [spec], rep)
        return f"{self.prefix} {self.name}: Reinstall Complete"

    def resume(self, rec: dict[str, Any]) -> str:
        """A crash interrupted pip: install the target again (pip installs are
        not atomic; re-running them is), or finish after the install."""
        quiet = Reporter(self.server, self.name)
        quiet.proc_id = rec.get("proc_id", quiet.proc_id)
        try:
            if rec.get("step") == jn.BEGIN:
                self.manager.run_streaming([self.python, "-m", "pip", "install", "-U",
                                            "--disable-pip-version-check", rec["spec"]],
                                           quiet)
                self.manager.journal.put(self.name, rollback_version=rec["from_version"],
                                         rollback_spec=rec["back"])
        finally:
            self.manager.journal.finish(rec)
        return (f"Interrupted {'update' if rec['op'] == 'upgrade' else rec['op']} of "
                f"{self.name} to {rec.get('to_version')} completed at start")
