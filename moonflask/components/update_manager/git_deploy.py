"""The ``git_repo`` updater: software deployed as a git checkout.

Status (update_manager.md "Git Repo Status"): versions from ``git describe
--tags --long``, commits behind with their messages and tags, dirty /
detached / corrupt (``git fsck``) / pristine, anomalies and warnings.
Channels: ``dev`` follows ``REMOTE/primary_branch``, ``beta`` its newest
``vX.Y.Z[-suffix]`` tag, ``stable`` its newest ``vX.Y.Z`` tag;
``pinned_commit`` overrides the channel.

Crash safety (issue 12): each upgrade, rollback and recovery writes an
intent record (journal.py) before it touches the repo and advances it step
by step; at start :meth:`GitRepo.resume` returns an upgrade interrupted
before its git step to the previous commit and completes one interrupted
after it; a repo left corrupt is re-cloned from ``recovery_url`` keeping its
local branches (:mod:`.git_recover`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

import gevent

from . import journal as jn
from .base import BaseUpdater, Reporter, UpdateError
from .git_cmd import GitError, run_git
from .git_files import (Fingerprint, FsckGate, config_stamp, fingerprint, includes_others,
                        read_ref, run_fsck)
from .git_read import commits_behind, compare, read_status
from .git_recover import clear_stale_locks, hard_recover, resume_hard_recover

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"^v\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")
STABLE_TAG_RE = re.compile(r"^v\d+\.\d+\.\d+$")
MAX_UNTAGGED = 30   # commits_behind: at most this many untagged commits
MAX_LOG = 100       # ... within this many commits
GC_LOOSE_QUIET = 1000  # fewer loose objects than this, and
GC_PACKS_QUIET = 20    # fewer packs: the refresh's fetch skips git's auto-gc


def _semver_key(tag: str) -> tuple:
    core, _, pre = tag[1:].partition("-")
    nums = tuple(int(p) for p in core.split("."))
    return nums + ((1,) if not pre else (0, pre))


def _url_parts(url: str) -> tuple[str, str]:
    """``(owner, repo_name)`` of a git URL; ``"?"`` for an unknown owner."""
    trimmed = url.rstrip("/")
    if trimmed.endswith(".git"):
        trimmed = trimmed[:-4]
    match = re.search(r"(?:github\.com|gitlab\.com|[\w.-]+)[:/]([^/:]+)/([^/]+)$", trimmed)
    if match and ("://" in url or "@" in url):
        return match.group(1), match.group(2)
    return "?", os.path.basename(trimmed) or "?"


def _same_url(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u.strip().rstrip("/").lower()
        u = u[:-4] if u.endswith(".git") else u
        return re.sub(r"^(https?://|git@|ssh://git@)", "", u).replace(":", "/")
    return norm(a) == norm(b)


class GitRepo(BaseUpdater):
    """One git checkout under update management.

    Args:
        manager: the UpdateManager.
        name: ``moonraker``, ``klipper`` or the extension's name.
        section: ``[update_manager NAME]`` (None for the built-in entries).
        path: the checkout (None: not known yet, e.g. Klipper before Klippy
            identifies).
        defaults: option defaults of the built-in entries (``origin``,
            ``virtualenv``, ``requirements``, ``managed_services`` ...).
    Raises:
        ConfigError: a required option is missing or invalid.
    """

    configured_type = "git_repo"
    prefix = "Git Repo"

    def __init__(self, manager: Any, name: str, section: Any, path: str | None,
                 defaults: dict[str, Any] | None = None,
                 default_channel: str = "dev") -> None:
        super().__init__(manager, name, section, default_channel)
        d = defaults or {}

        def opt(key: str, default: Any = None) -> Any:
            if section is not None and (key in section or key not in d):
                return section.get(key, d.get(key, default))
            return d.get(key, default)
        self.path = os.path.expanduser(path) if path else None
        self.origin: str | None = opt("origin")
        self.moved_origin: str | None = opt("moved_origin")
        self.primary_branch: str = opt("primary_branch", "master") or "master"
        pinned = opt("pinned_commit")
        self.pinned_commit: str | None = pinned.lower() if pinned else None
        venv = opt("virtualenv")
        env = opt("env")
        if not venv and env:  # deprecated: the venv's python
            venv = os.path.dirname(os.path.dirname(os.path.expanduser(env)))
        self.virtualenv: str | None = os.path.expanduser(venv) if venv else None
        self.requirements: str | None = opt("requirements")
        self.system_dependencies: str | None = opt("system_dependencies")
        self.install_script: str | None = opt("install_script")
        self.enable_node_updates = (section.getboolean("enable_node_updates", False)
                                    if section is not None else False)
        is_service = (section.getboolean("is_system_service", True)
                      if section is not None else True)
        if section is not None and "managed_services" in section:
            self.managed_services: list[str] = section.getlist("managed_services", [],
                                                                separator=None) or []
        else:
            self.managed_services = list(d.get("managed_services", [name] if is_service
                                               else []))
        self.not_git_reason: str | None = d.get("not_git_reason")
        self._fsck_gate = FsckGate()
        self._remotes_cache: tuple[tuple, str] | None = None  # (config stamp, remote -v)
        self._reset_status()

    # -- status -------------------------------------------------------------
    def _reset_status(self) -> None:
        self.repo_detected = False
        self.remote_alias = "origin"
        self.branch = "?"
        self.remote_url = "?"
        self.version = "?"
        self.remote_version = "?"
        self.current_hash = "?"
        self.remote_hash = "?"
        self.full_version = "?"
        self.is_dirty = False
        self.detached = False
        self.corrupt = False
        self.pristine = False
        self.commits_behind: list[dict[str, Any]] = []
        self.commits_behind_count = 0
        self.git_messages: list[str] = []
        self.warnings: list[str] = []
        self.anomalies: list[str] = []
        self.target: str | None = None
        self._upstream = ""       # the branch's upstream as git status names it
        self._remote_ok = False   # the remote's side was read to the end

    def _git(self, *args: str, **kw: Any) -> str:
        assert self.path is not None
        return run_git(self.path, *args, **kw)

    def refresh(self) -> None:
        """Re-read the repo and fetch from its remote (update_manager.md
        "Refresh update status"); problems end up in ``warnings`` /
        ``git_messages``, never as an exception."""
        self._reset_status()
        try:
            self._refresh()
        except GitError as err:
            self.git_messages.append(str(err))
            self.warnings.append(f"Git command failed: {err}")
        finally:
            self.mark_refreshed()
        note = self.manager.journal.get(self.name).get("recovery_note")
        if note:
            self.anomalies.append(note)
        for msg in self.warnings:
            log.info("Git Repo %s: warning: %s", self.name, msg)

    def _refresh(self) -> None:
        if self.path is None or not os.path.isdir(self.path):
            self.warnings.append(self.not_git_reason or
                                 f"Repo path {self.path or '?'} does not exist")
            return
        if not os.path.exists(os.path.join(self.path, ".git")):
            self.warnings.append(self.not_git_reason or
                                 f"{self.path} is not a git repository")
            return
        self.repo_detected = True
        # git fsck reads every object (the longest command of a refresh) and
        # changes nothing: it runs alongside the other reads, and only when
        # the object store changed since the last clean check (git_files.py).
        before = self._fingerprint()
        fsck = None
        started = None
        if self._fsck_gate.needed(before):
            started = time.monotonic()
            fsck = gevent.spawn(self._fsck_ok)
        ok = False
        try:
            self._read_local()
            try:
                self._read_remote(before)
            except GitError:
                self._describe()  # the local version, whatever the remote did
                raise
            self._describe()
            if self._remote_ok and self.version == "?" and self.channel != "dev":
                self.warnings.append("No valid tag found: the stable and beta channels "
                                     "need a vX.Y.Z tag")
            ok = True
        finally:
            self.corrupt = fsck is not None and not fsck.get()
            if self.corrupt:
                self.warnings.insert(0, "Repo is corrupt: git fsck reported errors; "
                                        "a hard recovery is required")
            # a failed git command with fsck skipped: check next time
            self._fsck_gate.done(before, self._fingerprint(),
                                 not self.corrupt and (ok or fsck is not None), started)

    def _fingerprint(self) -> Fingerprint | None:
        """The stat fingerprint of the repo (git_files.py), taken in the
        threadpool (a repo with thousands of loose objects takes a few ms)."""
        assert self.path is not None
        try:
            return gevent.get_hub().threadpool.apply(fingerprint, (self.path,))
        except Exception:  # noqa: BLE001 (no fingerprint: fsck runs)
            log.exception("Git Repo %s: fingerprint failed", self.name)
            return None

    def _fsck_ok(self) -> bool:
        assert self.path is not None
        ok, output = run_fsck(self.path)
        if not ok:
            self.git_messages.append(output)
        return ok

    def _read_local(self) -> None:
        """Branch, HEAD, dirty and untracked files: one ``git status``
        (porcelain v2, whose header names HEAD's commit and the upstream)."""
        st = read_status(self._git)
        head, oid, modified, untracked = st.head, st.oid, st.modified, st.untracked
        self._upstream = st.upstream
        self.detached = head == "(detached)"
        self.is_dirty = bool(modified)
        self.pristine = not modified and not untracked
        if self.detached:
            self.branch = "?"
            msg = "Detached HEAD detected"
            (self.anomalies if self.server.debug else self.warnings).append(msg)
        else:
            self.branch = head
        if modified:
            self.warnings.append("Repo is dirty.  Detected the following modified "
                                 f"files: {modified}")
        if untracked:
            self.anomalies.append(f"Repo has untracked source files: {untracked}")
        # "(initial)": no commit yet, rev-parse says so (a git error)
        self.current_hash = oid if re.fullmatch(r"[0-9a-f]{40,64}", oid) else \
            self._git("rev-parse", "HEAD").strip()

    def _describe(self) -> None:
        """``version``/``full_version_string`` of HEAD and ``remote_version``
        of the target (when known) from one ``git describe``; ``-dirty`` as
        ``describe --dirty`` would add it (tracked files modified), which
        git refuses to combine with commit names."""
        if self.current_hash == "?":
            return
        commits = [self.current_hash]
        if self.remote_hash not in ("?", self.current_hash):
            commits.append(self.remote_hash)
        lines = self._git("describe", "--always", "--tags", "--long", "--abbrev=8",
                          *commits).split()
        if not lines:
            return
        self.full_version = lines[0] + ("-dirty" if self.is_dirty else "")
        self.version = self._short_version(self.full_version)
        if self.remote_hash != "?":
            self.remote_version = self._short_version(lines[-1])

    @staticmethod
    def _short_version(described: str) -> str:
        match = re.match(r"^(.*)-(\d+)-g[0-9a-f]+(?:-dirty)?$", described)
        return f"{match.group(1)}-{match.group(2)}" if match else "?"

    def _read_remote(self, fp: Fingerprint | None) -> None:
        """Fetch and read the remote's side: url, target, commits behind
        (``fp``: the repo's fingerprint, for the fetch's auto-gc)."""
        # names and fetch urls (insteadOf applied, as get-url) in one command
        fetch_urls: dict[str, str] = {}
        for line in self._remotes().splitlines():
            parts = line.rsplit(" ", 1)[0].split("\t", 1)
            if len(parts) == 2 and line.endswith(" (fetch)"):
                fetch_urls.setdefault(parts[0], parts[1])
        remotes = list(fetch_urls)
        if not self.detached:
            self.remote_alias = self._branch_remote(remotes)
        if self.remote_alias not in remotes:
            if not remotes:
                self.warnings.append("No git remote configured")
                return
            self.remote_alias = "origin" if "origin" in remotes else remotes[0]
        self.remote_url = fetch_urls[self.remote_alias]
        if self.moved_origin and _same_url(self.remote_url, self.moved_origin) \
                and self.origin:
            self._git("remote", "set-url", self.remote_alias, self.origin)
            self.remote_url = self.origin
            self.anomalies.append(f"Remote url moved from {self.moved_origin} "
                                  f"to {self.origin}")
        if self.origin and not _same_url(self.remote_url, self.origin):
            self.anomalies.append(f"Unofficial remote url: {self.remote_url}")
        expected = f"origin/{self.primary_branch}"
        detected = f"{self.remote_alias}/{self.branch}"
        if not self.detached and detected != expected:
            self.anomalies.append("Repo not on official remote/branch, expected: "
                                  f"{expected}, detected: {detected}")
        self._git("fetch", *self._fetch_opts(fp), self.remote_alias, "--prune", timeout=300)
        track = f"{self.remote_alias}/{self.branch if not self.detached else self.primary_branch}"
        ok = read_ref(self.path or "", f"refs/remotes/{track}") if fp is not None else None
        if ok is None:  # not a plain ref file, or not found: git says
            ok = self._git("rev-parse", "--verify", "--quiet", f"refs/remotes/{track}",
                           ok_codes=(0, 1)).strip()
        if not ok:
            self.warnings.append(f"Remote branch {track} not found")
            return
        self.target = self._select_target(track)
        if self.target is None:
            return
        if self.target == f"refs/remotes/{track}" or self.target == track:
            self.remote_hash = ok  # the branch's commit, verified above
        else:
            self.remote_hash = self._git("rev-parse", f"{self.target}^{{commit}}").strip()
        ahead, behind, entries = compare(self._git, self.current_hash, self.remote_hash,
                                         MAX_LOG)
        if self.target != "HEAD" and ahead:
            self.anomalies.append(f"Repo has local commits not on {track}: an update "
                                  "needs a soft recovery first")
        self._remote_ok = True  # (the "No valid tag" check follows the describe)
        self._read_commits_behind(behind, entries)

    def _remotes(self) -> str:
        """``git remote -v``; the last answer again while no configuration
        file git reads changed (git_files.config_stamp)."""
        stamp = config_stamp(self.path or "")
        if stamp is not None and self._remotes_cache is not None \
                and self._remotes_cache[0] == stamp:
            return self._remotes_cache[1]
        out = self._git("remote", "-v")
        self._remotes_cache = None if stamp is None or includes_others(stamp) else \
            (stamp, out)
        return out

    def _branch_remote(self, remotes: list[str]) -> str:
        """The remote the branch tracks: the one its upstream (from
        ``status``) is a ref of, else ``branch.NAME.remote``, else origin."""
        named = [r for r in remotes if self._upstream.startswith(r + "/")]
        if named:
            return max(named, key=len)
        return self._git("config", "--get", f"branch.{self.branch}.remote",
                         ok_codes=(0, 1)).strip() or "origin"

    @staticmethod
    def _fetch_opts(fp: Fingerprint | None) -> list[str]:
        """Options of the refresh's fetch.  FETCH_HEAD is not written (no
        moonflask command reads it).  ``git maintenance run --auto`` (one
        more process per fetch) is skipped while the repo holds far fewer
        loose objects and packs than git's own auto-gc limits (``gc.auto``
        6700, ``gc.autoPackLimit`` 50): it would find nothing to do; past
        them the fetch runs it as usual.  The fetch keeps ``core.fsync=all``
        (run_git): its objects are on disk before its refs name them."""
        opts = ["--no-write-fetch-head"]
        if fp is not None and fp.loose < GC_LOOSE_QUIET and fp.packs < GC_PACKS_QUIET:
            opts.append("--no-auto-gc")
        return opts

    def _select_target(self, track: str) -> str | None:
        if self.pinned_commit:
            try:
                pinned = self._git("rev-parse", "--verify",
                                   f"{self.pinned_commit}^{{commit}}").strip()
            except GitError:
                self.warnings.append(f"Pinned commit {self.pinned_commit} not found in "
                                     "the repo: updates are disabled")
                return None
            if self.current_hash != pinned and not self._ancestor_rc(self.current_hash,
                                                                     pinned):
                self.warnings.append(f"Repo is beyond the pinned commit {pinned[:8]}: "
                                     "updates are disabled")
                return None
            return pinned
        if self.channel == "dev":
            return track
        pattern = STABLE_TAG_RE if self.channel == "stable" else TAG_RE
        tags = [t for t in self._git("tag", "--list", "v*", "--merged", track).split()
                if pattern.match(t)]
        if not tags:
            self.warnings.append(f"No {self.channel} release tag on {track}")
            return None
        best = max(tags, key=_semver_key)
        best_hash = self._git("rev-parse", f"{best}^{{commit}}").strip()
        if self.current_hash != best_hash and self._ancestor_rc(best_hash, self.current_hash):
            return "HEAD"  # already beyond the newest release of this channel
        return f"refs/tags/{best}"

    def _ancestor_rc(self, a: str, b: str) -> bool:
        try:
            self._git("merge-base", "--is-ancestor", a, b)
            return True
        except GitError:
            return False

    def _read_commits_behind(self, behind: int, entries: list[list[str]]) -> None:
        """``commits_behind`` from the log ``entries`` of HEAD..remote_hash
        (``behind`` commits in all)."""
        if self.remote_hash == self.current_hash or not behind:
            return
        self.commits_behind_count = behind
        self.commits_behind = commits_behind(entries, MAX_UNTAGGED)

    def rollback_info(self) -> tuple[str | None, str]:
        """``(rollback_hash, rollback_version)``; before any update: the current."""
        st = self.manager.journal.get(self.name)
        return st.get("rollback_hash"), st.get("rollback_version", self.version)

    @property
    def is_valid(self) -> bool:
        """Updates are possible: repo found, no warnings."""
        return self.repo_detected and not self.warnings

    def status(self) -> dict[str, Any]:
        """The Git Repo Status object, in the reference's key order."""
        owner, repo_name = _url_parts(self.origin or self.remote_url) \
            if (self.origin or self.remote_url != "?") else ("?", "?")
        return {
            "channel": self.channel, "debug_enabled": bool(self.server.debug),
            "channel_invalid": self.channel_invalid, "is_valid": self.is_valid,
            "configured_type": "git_repo", "info_tags": list(self.info_tags),
            "detected_type": "git_repo", "repo_detected": self.repo_detected,
            "remote_alias": self.remote_alias, "branch": self.branch, "owner": owner,
            "repo_name": repo_name, "remote_url": self.remote_url,
            "recovery_url": self.recovery_url or "?", "version": self.version,
            "remote_version": self.remote_version,
            "rollback_version": self.rollback_info()[1],
            "current_hash": self.current_hash, "remote_hash": self.remote_hash,
            "is_dirty": self.is_dirty, "detached": self.detached,
            "commits_behind": list(self.commits_behind),
            "commits_behind_count": self.commits_behind_count,
            "git_messages": list(self.git_messages),
            "full_version_string": self.full_version, "pristine": self.pristine,
            "corrupt": self.corrupt, "warnings": list(self.warnings),
            "anomalies": list(self.anomalies) if self.report_anomalies else [],
            "name": self.name,
        }

    @property
    def recovery_url(self) -> str | None:
        """The URL a hard recovery clones: ``origin``, else the remote's URL."""
        return self.origin or (self.remote_url if self.remote_url != "?" else None)

    # -- updates --------------------------------------------------------------
    def _check_updatable(self) -> None:
        if not self.is_valid:
            reasons = "; ".join(self.warnings) or "repo not detected"
            raise UpdateError(f"Git Repo {self.name}: update refused, repo is not "
                              f"valid: {reasons}")

    def upgrade(self, rep: Reporter) -> str:
        """Move the checkout to the channel's target, update its
        dependencies, restart its services; a service that does not come back
        rolls the update back.  Raises UpdateError."""
        self._check_updatable()
        if self.target is None or self.remote_hash in ("?", self.current_hash):
            return f"Git Repo {self.name}: already up to date"
        ff = self.is_ancestor_of_target()
        if not ff and not self.detached:
            raise UpdateError(f"Git Repo {self.name}: the branch has local commits that "
                              f"{self.remote_alias} does not have; refusing to discard them "
                              "(a soft recovery resets the branch)")
        rep(f"Git Repo {self.name}: Updating Repo...")
        rec = self.manager.journal.begin(
            self.name, "upgrade", path=self.path, from_hash=self.current_hash,
            from_version=self.version, to_hash=self.remote_hash,
            to_version=self.remote_version, proc_id=rep.proc_id)
        from_hash = self.current_hash
        try:
            self._move_to(self.remote_hash, rep, ff=ff)
        except GitError as err:
            rep(f"Git Repo {self.name}: git failed, returning to {self.version}")
            self._return_to(rec, from_hash, rep)
            raise UpdateError(f"Git Repo {self.name}: {err}") from None
        self.manager.journal.step(rec, jn.GIT_DONE)
        self.manager.journal.put(self.name, rollback_hash=from_hash,
                                 rollback_version=self.version, recovery_note=None)
        self._complete(rec, rep)
        return f"Git Repo {self.name}: Update Finished..."

    def is_ancestor_of_target(self) -> bool:
        """True when HEAD is an ancestor of the remote target (fast-forward)."""
        return self._ancestor_rc(self.current_hash, self.remote_hash)

    def _move_to(self, target: str, rep: Reporter, ff: bool = False) -> None:
        before = self._git("rev-parse", "HEAD").strip()
        if ff and not self.detached:
            self._git("merge", "--ff-only", target, on_line=rep)
        else:
            self._git("reset", "--hard", target, on_line=rep)
        self._fsync_worktree(before, target)

    def _fsync_worktree(self, frm: str, to: str) -> None:
        """Make the work-tree files that differ between ``frm`` and ``to`` durable."""
        try:
            names = self._git("diff", "--name-only", "--no-renames", frm, to).splitlines()
        except GitError:
            jn.syncfs(self.path or "/")
            return
        jn.fsync_files(self.path or "", [n for n in names if n])

    def _complete(self, rec: dict[str, Any], rep: Reporter) -> None:
        """The steps after git: dependencies, services, verification."""
        frm, to = rec["from_hash"], rec["to_hash"]
        try:
            self._update_deps(frm, to, rep, force=rec["step"] != jn.GIT_DONE)
        except UpdateError as err:
            self._roll_back(rec, rep, f"its dependencies did not install ({err})")
        self.manager.journal.step(rec, jn.SERVICES)
        failed = self._restart_services(rep)
        if failed:
            self._roll_back(rec, rep, f"service {failed} did not start")
        self.manager.journal.finish(rec)

    def _roll_back(self, rec: dict[str, Any], rep: Reporter, why: str) -> None:
        """Return a failed update to ``from_hash`` (dependencies reinstalled
        as far as they go, services restarted) and raise UpdateError."""
        frm, to = rec["from_hash"], rec["to_hash"]
        rep(f"Git Repo {self.name}: {why} after the update; rolling back to "
            f"{rec['from_version']}")
        self.manager.journal.step(rec, jn.ROLLING_BACK)
        try:
            self._return_to(rec, frm, rep, deps_from=to)
        except UpdateError as err:  # the old dependencies: reported, the repo is back
            rep(f"Git Repo {self.name}: reinstalling the previous dependencies failed: {err}")
            self.manager.journal.finish(rec)
        self._restart_services(rep)
        note = (f"Rolled back to {rec['from_version']}: {why} after the update to "
                f"{rec['to_version']}")
        self.manager.journal.put(self.name, recovery_note=note)
        raise UpdateError(f"Git Repo {self.name}: {note}")

    def _return_to(self, rec: dict[str, Any], commit: str, rep: Reporter | None,
                   deps_from: str | None = None) -> None:
        clear_stale_locks(self.path)
        before = rec.get("to_hash") or "HEAD"
        self._git("reset", "--hard", commit, on_line=rep)
        self._drop_added_files(commit, before)
        if self.branch not in ("?", "") and not self.detached:
            cur = self._git("rev-parse", "--abbrev-ref", "HEAD").strip()
            if cur != self.branch:
                self._git("checkout", self.branch, on_line=rep)
                self._git("reset", "--hard", commit, on_line=rep)
        self._fsync_worktree(before, commit)
        if deps_from is not None:
            self._update_deps(deps_from, commit, rep or (lambda *_a, **_k: None))
        self.manager.journal.finish(rec)

    def _drop_added_files(self, frm: str, to: str) -> None:
        """After returning to ``frm``: remove the untracked files that only
        ``to`` has (a checkout killed half-way wrote them before the ref
        moved); other untracked files are the user's and stay."""
        if to in ("HEAD", frm):
            return
        try:
            added = set(self._git("diff", "--name-only", "--no-renames", "--diff-filter=A",
                                  frm, to).splitlines())
            untracked = self._git("ls-files", "--others", "-z").split("\0")
        except GitError:
            return
        root = self.path or ""
        for name in (n for n in untracked if n in added):
            os.unlink(os.path.join(root, name))
            folder = os.path.dirname(name)
            while folder and not os.listdir(os.path.join(root, folder)):
                os.rmdir(os.path.join(root, folder))
                folder = os.path.dirname(folder)

    def _changed(self, frm: str, to: str, relpath: str | None) -> bool:
        if not relpath:
            return False
        try:
            out = self._git("diff", "--name-only", frm, to, "--", relpath)
        except GitError:
            return True
        return bool(out.strip())

    def _update_deps(self, frm: str, to: str, rep: Any, force: bool = False) -> None:
        """Install what changed between ``frm`` and ``to`` (all when ``force``):
        python requirements, node packages, system dependencies.
        Raises UpdateError."""
        req = os.path.join(self.path or "", self.requirements or "")
        if self.virtualenv and self.requirements and (force or self._changed(
                frm, to, self.requirements)):
            if os.path.isfile(req):
                rep(f"Git Repo {self.name}: Updating python packages...")
                self.manager.run_streaming(
                    [os.path.join(self.virtualenv, "bin", "python"), "-m", "pip", "install",
                     "--disable-pip-version-check", "-r", req], rep)
            else:
                rep(f"Git Repo {self.name}: no {self.requirements} in this version")
        if self.enable_node_updates and (force or self._changed(frm, to, "package-lock.json")):
            rep(f"Git Repo {self.name}: Updating node packages...")
            self.manager.run_streaming(["npm", "ci", "--only=prod", "--prefix",
                                        self.path or "."], rep)
        for rel, parse in ((self.system_dependencies, self._parse_sysdeps),
                           (self.install_script, self._parse_install_script)):
            if rel and (force or self._changed(frm, to, rel)):
                pkgs = parse(os.path.join(self.path or "", rel))
                if pkgs:
                    self.manager.install_system_packages(self.name, pkgs, rep)

    @staticmethod
    def _parse_sysdeps(path: str) -> list[str]:
        import distro
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return []
        for key in [distro.id(), *distro.like().split()]:
            if isinstance(data, dict) and isinstance(data.get(key), list):
                return [str(p) for p in data[key]]
        return []

    @staticmethod
    def _parse_install_script(path: str) -> list[str]:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            return []
        pkgs: list[str] = []
        for match in re.finditer(r'^\s*PKGLIST="([^"]*)"', text, re.M):
            pkgs += [p for p in match.group(1).split() if not p.startswith("${")]
        return pkgs

    def rollback(self, rep: Reporter) -> str:
        """Reset to ``rollback_version`` (update_manager.md "Rollback")."""
        self._check_updatable()
        rb_hash, rb_version = self.rollback_info()
        if not rb_hash or rb_hash == self.current_hash:
            raise UpdateError(f"Git Repo {self.name}: no rollback version available")
        rec = self.manager.journal.begin(
            self.name, "rollback", path=self.path, from_hash=self.current_hash,
            from_version=self.version, to_hash=rb_hash, to_version=rb_version,
            proc_id=rep.proc_id)
        self._move_to(rb_hash, rep)
        self.manager.journal.step(rec, jn.GIT_DONE)
        self._complete(rec, rep)
        return f"Git Repo {self.name}: Rollback Complete"

    def recover(self, rep: Reporter, hard: bool) -> str:
        """Soft: ``git reset --hard`` on the current branch; hard: re-clone
        from ``recovery_url`` keeping local branches (update_manager.md
        "Recover a corrupt repo").  Raises UpdateError."""
        if self.path is None or not os.path.isdir(self.path):
            raise UpdateError(f"Git Repo {self.name}: repo path not found")
        rep(f"Git Repo {self.name}: Attempting Repo Recovery...")
        if hard:
            url = self.recovery_url
            if not url:
                raise UpdateError(f"Git Repo {self.name}: no recovery url known")
            rec = self.manager.journal.begin(self.name, "recover_hard", path=self.path,
                                             url=url, proc_id=rep.proc_id)
            try:
                hard_recover(self.path, url, self.primary_branch, rep,
                             lambda step, **f: self.manager.journal.step(rec, step, **f))
            except GitError as err:
                self.manager.journal.finish(rec)
                raise UpdateError(f"Git Repo {self.name}: hard recovery failed: "
                                  f"{err}") from None
            self.manager.journal.finish(rec)
        else:
            rep(f"Git Repo {self.name}: Resetting Git Repo...")
            clear_stale_locks(self.path)
            try:
                self._git("reset", "--hard", on_line=rep)
                jn.syncfs(self.path)
            except GitError as err:
                raise UpdateError(f"Git Repo {self.name}: {err}") from None
        self.manager.journal.put(self.name, recovery_note=None)
        self._update_deps("HEAD", "HEAD", rep, force=hard)
        return f"Git Repo {self.name}: Reinstall Complete"

    # -- crash recovery ---------------------------------------------------------
    def resume(self, rec: dict[str, Any]) -> str:
        """Finish or undo the interrupted operation ``rec`` (found at start).

        Upgrade before its git step: back to ``from_hash``; after it:
        dependencies and services completed (a failing service rolls back).
        Rollback and soft recovery are completed; a hard recovery swap is
        finished.  A repo left corrupt is re-cloned.  Returns the note that
        the status shows in ``anomalies`` until the next update.
        """
        op, step = rec.get("op"), rec.get("step")
        if op == "recover_hard":
            done = resume_hard_recover(rec)
            self.manager.journal.finish(rec)
            if done:
                return f"Interrupted hard recovery of {self.name} completed at start"
            return (f"Interrupted hard recovery of {self.name} found at start: the repo is "
                    "as before, run the recovery again")
        clear_stale_locks(self.path)
        quiet = Reporter(self.server, self.name)
        quiet.proc_id = rec.get("proc_id", quiet.proc_id)
        if not self._fsck_ok() and self.recovery_url:
            log.error("Git Repo %s: corrupt after the crash, re-cloning", self.name)
            hard_recover(self.path or "", self.recovery_url, self.primary_branch, quiet,
                         lambda *_a, **_k: None)
        self.branch = self._git("rev-parse", "--abbrev-ref", "HEAD").strip()
        self.detached = self.branch == "HEAD"
        if op == "upgrade" and step == jn.BEGIN:
            self._return_to(rec, rec["from_hash"], None, deps_from=None)
            return (f"Interrupted update of {self.name} to {rec.get('to_version')} found "
                    f"at start: returned to {rec.get('from_version')}")
        if step == jn.ROLLING_BACK:
            self._return_to(rec, rec["from_hash"], None, deps_from=rec["to_hash"])
            return (f"Interrupted rollback of the update of {self.name} finished at start: "
                    f"at {rec.get('from_version')}")
        target = rec["to_hash"]
        head = self._git("rev-parse", "HEAD").strip()
        if head != target or op != "upgrade":
            self._git("reset", "--hard", target)
            self._fsync_worktree(head, target)
        if op == "upgrade":
            self.manager.journal.put(self.name, rollback_hash=rec["from_hash"],
                                     rollback_version=rec.get("from_version"))
        self.manager.journal.step(rec, rec["step"] if step != jn.BEGIN else jn.GIT_DONE)
        try:
            self._complete(rec, quiet)
        except UpdateError as err:
            return str(err)
        what = "update" if op == "upgrade" else op
        return (f"Interrupted {what} of {self.name} to {rec.get('to_version')} completed "
                f"at start: at {rec.get('to_version')}")
