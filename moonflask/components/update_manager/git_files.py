"""What a refresh learns from a repository's files without running git:
when ``git fsck`` is needed, the value of a ref (:func:`read_ref`), whether
the git configuration changed (:func:`config_stamp`).

``git fsck`` runs only when the repository's object store changed since the
last clean check (or that check is old).

``git fsck`` reads every object: the longest git command of a refresh (90 ms
of CPU for moonflask's own small repo, seconds for Klipper's).  Corruption
as issue 12 means it — an object file a power cut or a full disk left
empty or truncated, a pack cut short, a ref file emptied — changes the
file's size, mtime or inode; so a :class:`Fingerprint` of the object store
(every file under ``objects/``, stat only) and of the refs, the index and
HEAD tells whether there is anything fsck has not seen clean.

:class:`FsckGate` keeps, per repository, the fingerprint of the last state
known clean:

- before a refresh, fsck runs when the fingerprint differs from it, when
  there is none (the first refresh after start: the gate lives in memory, so
  a crash or a power cut always gets a full fsck at the next start), when
  the repo has alternates (objects elsewhere), or when the last full fsck is
  older than :data:`FSCK_MAX_AGE` (bit rot that changes no metadata);
- after a refresh whose fsck passed (or was not needed), the fingerprint
  taken after it becomes the clean state, provided the refresh only ADDED
  object files (the fetch's objects: git writes them from the received
  pack, hashing them as it writes, checks their connectivity before it
  moves a ref, and fsyncs them, ``core.fsync=all``); an object file that
  changed or went away during the refresh (a repack, a truncation) leaves no
  clean state, so the next refresh runs fsck.  Refs, HEAD and the index may
  change during a refresh (the fetch moves remote-tracking refs, ``status``
  refreshes the index); changed between refreshes, they make fsck run.

Spec: update_manager.md "corrupt"; issue 12 item 4.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

from .git_cmd import GitError, run_git

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
FSCK_MAX_AGE = 3600.0  # seconds: a full fsck at least this often, changes or not
_Stat = tuple[int, int, int]  # (size, mtime_ns, inode)


@dataclass(frozen=True)
class Fingerprint:
    """The stat fingerprint of one repository.

    Attributes:
        objects: ``{path relative to objects/: (size, mtime_ns, inode)}``.
        refs: ``((path, size, mtime_ns, inode), ...)`` of HEAD, the index,
            packed-refs and every file under refs/ (of the worktree's git dir
            and of the common dir).
        loose: number of loose object files.
        packs: number of ``.pack`` files.
    """

    objects: dict[str, _Stat] = field(hash=False, compare=True)
    refs: tuple[tuple[str, int, int, int], ...]
    loose: int
    packs: int


def git_dirs(worktree: str) -> tuple[str, str] | None:
    """``(git dir, common dir)`` of the checkout ``worktree`` (a linked
    worktree's ``.git`` is a file naming its git dir, whose ``commondir``
    names the shared one); None when it cannot be told."""
    dotgit = os.path.join(worktree, ".git")
    try:
        if os.path.isdir(dotgit):
            gitdir = dotgit
        else:
            with open(dotgit, encoding="utf-8") as fh:
                line = fh.read().strip()
            if not line.startswith("gitdir:"):
                return None
            gitdir = os.path.join(worktree, line[7:].strip())
        common = gitdir
        common_file = os.path.join(gitdir, "commondir")
        if os.path.isfile(common_file):
            with open(common_file, encoding="utf-8") as fh:
                common = os.path.join(gitdir, fh.read().strip())
    except OSError:
        return None
    return os.path.normpath(gitdir), os.path.normpath(common)


def _walk(top: str, rel: str, out: dict[str, _Stat]) -> None:
    with os.scandir(top) as it:
        for entry in it:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                _walk(entry.path, name, out)
            else:
                st = entry.stat(follow_symlinks=False)
                out[name] = (st.st_size, st.st_mtime_ns, st.st_ino)


def fingerprint(worktree: str) -> Fingerprint | None:
    """Stat every file of the repo's object store and refs (no file is
    read; about 3 µs a file).  None when the repo's layout is not the plain
    one (no git dir found, alternates, a reftable): then fsck always runs."""
    dirs = git_dirs(worktree)
    if dirs is None:
        return None
    gitdir, common = dirs
    objects: dict[str, _Stat] = {}
    refs_files: dict[str, _Stat] = {}
    try:
        _walk(os.path.join(common, "objects"), "", objects)
        for base, tag in ((gitdir, "g"), (common, "c")) if gitdir != common else \
                ((gitdir, "g"),):
            for name in ("HEAD", "index", "packed-refs"):
                try:
                    st = os.stat(os.path.join(base, name))
                except FileNotFoundError:
                    continue
                refs_files[f"{tag}:{name}"] = (st.st_size, st.st_mtime_ns, st.st_ino)
            if os.path.isdir(os.path.join(base, "refs")):
                found: dict[str, _Stat] = {}
                _walk(os.path.join(base, "refs"), "", found)
                refs_files.update((f"{tag}:refs/{k}", v) for k, v in found.items())
            if os.path.exists(os.path.join(base, "reftable")):
                return None
    except OSError:
        return None
    if any(k.startswith("info/") and "alternates" in k for k in objects):
        return None
    loose = sum(1 for k in objects if len(k) > 3 and k[2] == "/")
    packs = sum(1 for k in objects if k.startswith("pack/") and k.endswith(".pack"))
    refs = tuple(sorted((k, *v) for k, v in refs_files.items()))
    return Fingerprint(objects, refs, loose, packs)


class FsckGate:
    """Whether a refresh of one repository needs ``git fsck`` (module doc)."""

    def __init__(self) -> None:
        self.clean: Fingerprint | None = None
        self.checked_at = 0.0  # time.monotonic() of the start of the last clean fsck

    def needed(self, before: Fingerprint | None) -> bool:
        """True when fsck must run for the state ``before`` (taken before
        the refresh started)."""
        return before is None or self.clean is None or before != self.clean or \
            time.monotonic() - self.checked_at > FSCK_MAX_AGE

    def done(self, before: Fingerprint | None, after: Fingerprint | None, ok: bool,
             fsck_started: float | None) -> None:
        """Record the outcome of a refresh: ``ok`` False (fsck failed, or the
        refresh failed in a way that leaves the state unknown) forgets the
        clean state; else ``after`` becomes it when the refresh only added
        object files to ``before``.  ``fsck_started``: monotonic time fsck
        started, None when it was skipped."""
        if not ok or before is None or after is None or any(
                after.objects.get(k) != v for k, v in before.objects.items()):
            self.clean = None
            return
        self.clean = after
        if fsck_started is not None:
            self.checked_at = fsck_started

    def forget(self) -> None:
        """Drop the clean state (the next refresh runs fsck)."""
        self.clean = None


def run_fsck(worktree: str, timeout: float = 300.0) -> tuple[bool, str]:
    """``git fsck --no-dangling`` of the repo; returns ``(clean, the end of
    its output when not)``.  Without a commit-graph or a multi-pack-index
    file, fsck's verification of them (one git process each) is turned off:
    there is nothing to verify."""
    opts: list[str] = []
    dirs = git_dirs(worktree)
    if dirs is not None:
        objects = os.path.join(dirs[1], "objects")
        if not (os.path.exists(os.path.join(objects, "info", "commit-graph")) or
                os.path.exists(os.path.join(objects, "info", "commit-graphs"))):
            opts += ["-c", "core.commitGraph=false"]
        if not os.path.exists(os.path.join(objects, "pack", "multi-pack-index")):
            opts += ["-c", "core.multiPackIndex=false"]
    try:
        run_git(worktree, *opts, "fsck", "--no-dangling", "--no-progress", timeout=timeout)
        return True, ""
    except GitError as err:
        return False, err.output.strip()[-2000:]


def read_ref(worktree: str, refname: str) -> str | None:
    """The object id a ref of the files backend names (``refs/...``: its
    loose file in the common dir, else its line in ``packed-refs``); None
    when git should be asked instead: a symbolic ref, an unexpected content,
    a ref not found in either place (gitrepository-layout(5))."""
    dirs = git_dirs(worktree)
    if dirs is None or not refname.startswith("refs/"):
        return None
    common = dirs[1]
    try:
        with open(os.path.join(common, refname), encoding="ascii") as fh:
            value = fh.read().strip()
    except FileNotFoundError:
        value = ""
    except (OSError, ValueError):
        return None
    if not value:
        try:
            with open(os.path.join(common, "packed-refs"), encoding="utf-8") as fh:
                for line in fh:
                    oid, _, name = line.rstrip("\n").partition(" ")
                    if name == refname and not line.startswith(("#", "^")):
                        value = oid
                        break
        except (OSError, ValueError):
            return None
    return value if _OID.fullmatch(value) else None


def config_stamp(worktree: str) -> tuple | None:
    """The stat of every configuration file git reads for the repo (its
    config and config.worktree, the global and the system one): equal stamps,
    equal configuration.  None when there is no telling: the git dir is not
    found, or a file includes others (``[include]``/``[includeIf]``) or is
    set through the environment."""
    dirs = git_dirs(worktree)
    if dirs is None or any(k in os.environ for k in
                           ("GIT_CONFIG", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
                            "GIT_CONFIG_COUNT", "GIT_CONFIG_PARAMETERS", "GIT_DIR")):
        return None
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    files = (os.path.join(dirs[1], "config"), os.path.join(dirs[0], "config.worktree"),
             os.path.join(home, ".gitconfig"), os.path.join(xdg, "git", "config"),
             "/etc/gitconfig")
    stamp = []
    for path in files:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            stamp.append(None)
            continue
        except OSError:
            return None
        stamp.append((path, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamp)


def includes_others(stamp: tuple) -> bool:
    """True when a configuration file of ``stamp`` has an include section
    (what it includes is not in the stamp)."""
    for entry in stamp:
        if entry is None:
            continue
        try:
            with open(entry[0], encoding="utf-8", errors="replace") as fh:
                if "include" in fh.read().lower():
                    return True
        except OSError:
            return True
    return False
