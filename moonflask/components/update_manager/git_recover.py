"""Repairing a git checkout: stale lock files left by a killed git, and the
hard recovery that re-clones a corrupt repo from its recovery URL without
losing its local branches.

Hard recovery: clone ``url`` next to the repo (``PATH.mf-recover``), recreate
every local branch of the old repo at its commit (fetched from the old repo
when the remote lacks it), check out what HEAD was, then swap the folders
with two renames (the old one becomes ``PATH.mf-backup``, removed when every
branch was kept).  The journal records the swap so that a crash between the
renames is finished at the next start.  Spec: update_manager.md "Recover a
corrupt repo" (``hard == true``).
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

from .git_cmd import GitError, run_git
from .journal import fsync_dir, syncfs

log = logging.getLogger(__name__)

LOCK_FILES = ("index.lock", "HEAD.lock", "ORIG_HEAD.lock", "packed-refs.lock",
              "config.lock", "FETCH_HEAD.lock", "shallow.lock")


def clear_stale_locks(path: str | None) -> list[str]:
    """Remove the lock files a killed git left in ``path``'s ``.git``.

    Only called when moonflask's own journal shows that its git was
    interrupted (or for a recovery the user asked for).
    Returns: the removed files (relative to ``.git``)."""
    if not path:
        return []
    gitdir = os.path.join(path, ".git")
    if not os.path.isdir(gitdir):
        return []
    removed = []
    for name in LOCK_FILES:
        full = os.path.join(gitdir, name)
        if os.path.exists(full):
            os.unlink(full)
            removed.append(name)
    for root, _dirs, files in os.walk(os.path.join(gitdir, "refs")):
        for fname in files:
            if fname.endswith(".lock"):
                os.unlink(os.path.join(root, fname))
                removed.append(os.path.relpath(os.path.join(root, fname), gitdir))
    if removed:
        log.warning("removed stale git lock files in %s: %s", path, removed)
    return removed


def _local_refs(path: str) -> tuple[dict[str, str], str]:
    """``({branch: sha}, HEAD)`` read without loading objects; HEAD is
    ``ref:refs/heads/B`` or a sha."""
    branches: dict[str, str] = {}
    try:
        out = run_git(path, "for-each-ref", "refs/heads", "--format=%(refname) %(objectname)")
        for line in out.splitlines():
            ref, _, sha = line.partition(" ")
            branches[ref[len("refs/heads/"):]] = sha
    except GitError as err:
        log.error("reading the branches of %s failed: %s", path, err)
    head = ""
    try:
        with open(os.path.join(path, ".git", "HEAD"), encoding="utf-8") as fh:
            text = fh.read().strip()
        head = "ref:" + text[5:].strip() if text.startswith("ref:") else text
    except OSError:
        pass
    return branches, head


def hard_recover(path: str, url: str, primary_branch: str, rep: Callable[..., Any],
                 step: Callable[..., Any]) -> list[str]:
    """Re-clone ``path`` from ``url`` keeping its local branches and HEAD.

    Args:
        rep: progress reporter (one message per line).
        step: ``step(name, **fields)`` records progress in the journal.
    Returns: branches that could not be kept (their commits were only in the
        corrupt repo); the old repo is then kept at ``PATH.mf-backup``.
    Raises: GitError when the clone fails (the old repo is untouched).
    """
    tmp, bak = path + ".mf-recover", path + ".mf-backup"
    shutil.rmtree(tmp, ignore_errors=True)
    branches, head = _local_refs(path)
    rep(f"Cloning {url} ...")
    run_git(None, "clone", "--no-checkout", "--progress", url, tmp, on_line=rep)
    lost: list[str] = []
    for name, sha in branches.items():
        try:
            run_git(tmp, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}")
        except GitError:
            try:
                run_git(tmp, "fetch", "--no-tags", path, f"{sha}:refs/heads/{name}")
            except GitError:
                lost.append(name)
                rep(f"Branch {name} ({sha[:8]}) could not be recovered from the "
                    "corrupt repo")
                continue
        run_git(tmp, "update-ref", f"refs/heads/{name}", sha)
        remote_ref = run_git(tmp, "rev-parse", "--verify", "--quiet",
                             f"refs/remotes/origin/{name}", ok_codes=(0, 1)).strip()
        if remote_ref:
            run_git(tmp, "branch", f"--set-upstream-to=origin/{name}", name)
    if head.startswith("ref:refs/heads/") and head[15:] in branches \
            and head[15:] not in lost:
        run_git(tmp, "symbolic-ref", "HEAD", head[4:])
    elif head and not head.startswith("ref:"):
        run_git(tmp, "checkout", "--detach", head, ok_codes=(0, 1, 128))
    else:
        if primary_branch not in branches:
            run_git(tmp, "branch", primary_branch, f"origin/{primary_branch}",
                    ok_codes=(0, 128))
        run_git(tmp, "symbolic-ref", "HEAD", f"refs/heads/{primary_branch}")
    run_git(tmp, "reset", "--hard", on_line=rep)
    syncfs(tmp)
    step("swap", tmp=tmp, bak=bak, lost=lost)
    shutil.rmtree(bak, ignore_errors=True)
    os.rename(path, bak)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    if lost:
        rep(f"The corrupt repo is kept at {bak}")
    else:
        shutil.rmtree(bak, ignore_errors=True)
    rep("Repo re-cloned" + (f"; local branches kept: {sorted(branches)}" if branches else ""))
    return lost


def resume_hard_recover(rec: dict[str, Any]) -> bool:
    """Finish a hard recovery interrupted by a crash: complete the swap when
    it had begun, otherwise drop the half-made clone (the repo is as before).
    Returns True when the recovery was completed."""
    path = rec["path"]
    tmp, bak = path + ".mf-recover", path + ".mf-backup"
    if rec.get("step") == "swap" and not os.path.exists(path):
        os.rename(tmp if os.path.exists(tmp) else bak, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    shutil.rmtree(tmp, ignore_errors=True)
    if rec.get("step") == "swap" and not rec.get("lost"):
        shutil.rmtree(bak, ignore_errors=True)
    return rec.get("step") == "swap"
