"""Reading a repository's state from as few git commands as possible (a
refresh runs them for every repo; each is a process): ``git status`` in
porcelain v2 for branch, HEAD, upstream and files; one ``git log`` of both
sides of HEAD...target for the commits behind and ahead.

Spec: update_manager.md "Git Repo Status" (``is_dirty``, ``pristine``,
``commits_behind``, ``commits_behind_count``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

LOG_FORMAT = "--format=%m%x1D%H%x1D%an%x1D%ct%x1D%s%x1D%b%x1D%D%x1E"
Git = Callable[..., str]  # run_git bound to the repo: git(*args) -> stdout


@dataclass
class LocalState:
    """What ``git status --porcelain=v2 --branch`` says.

    Attributes:
        oid: HEAD's commit id (``(initial)`` before the first commit).
        head: the branch name, ``(detached)`` for a detached HEAD.
        upstream: the branch's upstream (``origin/master``), "" for none.
        modified: tracked files changed (staged or not), named as porcelain
            v1 names them (a rename as ``old -> new``).
        untracked: untracked files and folders, as porcelain v1 names them.
    """

    oid: str = ""
    head: str = ""
    upstream: str = ""
    modified: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)


def _v1_path(path: str) -> str:
    """A path of porcelain v2 as porcelain v1 prints it: v1 also quotes a
    path with a space (both C-quote special characters alike)."""
    return f'"{path}"' if " " in path and not path.startswith('"') else path


def read_status(git: Git) -> LocalState:
    """One ``git status --porcelain=v2 --branch``, without the optional index
    refresh (``--no-optional-locks``: a background refresh takes no
    ``index.lock`` that a user's own git command, or an update, would find
    in its way; and the command only reads).  Raises GitError."""
    st = LocalState()
    for ln in git("--no-optional-locks", "status", "--porcelain=v2",
                  "--branch").splitlines():
        if ln.startswith("# branch.oid "):
            st.oid = ln[13:].strip()
        elif ln.startswith("# branch.head "):
            st.head = ln[14:].strip()
        elif ln.startswith("# branch.upstream "):
            st.upstream = ln[18:].strip()
        elif ln.startswith("? "):
            st.untracked.append(_v1_path(ln[2:]))
        elif ln.startswith("1 "):
            st.modified.append(_v1_path(ln.split(" ", 8)[-1]))
        elif ln.startswith("2 "):  # renamed or copied: "path<TAB>orig"
            new, _, orig = ln.split(" ", 9)[-1].partition("\t")
            st.modified.append(f"{_v1_path(orig)} -> {_v1_path(new)}")
        elif ln.startswith("u "):
            st.modified.append(_v1_path(ln.split(" ", 10)[-1]))
    return st


def log(git: Git, *args: str) -> list[list[str]]:
    """``git log ARGS`` as ``[mark, sha, author, date, subject, body, tags]``
    lists (mark: ``<``/``>`` with ``--left-right``, else empty); tags: the
    ``%D`` decorations of tags only (annotated ones peeled)."""
    raw = git("log", *args, "--decorate-refs=refs/tags/", LOG_FORMAT)
    entries = [entry.strip("\n").split("\x1d") for entry in raw.split("\x1e")]
    return [e for e in entries if len(e) == 7]


def compare(git: Git, cur: str, target: str, max_log: int) -> tuple[int, int, list[list[str]]]:
    """``(ahead, behind, log entries of the newest max_log commits of
    cur..target)``: ahead, the commits of ``cur`` that ``target`` lacks
    (local commits); behind, those of ``target`` that ``cur`` lacks.  One
    ``git log --left-right cur...target`` when both sides hold fewer than
    ``2 * max_log`` commits in all (its order of the target's side is that
    of ``git log cur..target``: one date-ordered walk); else an exact count
    (``rev-list --count``) and the log of the target's side.  Raises GitError."""
    if cur == target:
        return 0, 0, []
    limit = 2 * max_log
    both = log(git, "--left-right", f"--max-count={limit}", f"{cur}...{target}")
    if len(both) < limit:  # every commit of both sides listed
        behind = [e for e in both if e[0] == ">"]
        return len(both) - len(behind), len(behind), behind[:max_log]
    counts = git("rev-list", "--left-right", "--count", f"{cur}...{target}").split()
    ahead, behind_n = (int(c) for c in counts) if len(counts) == 2 else (0, 0)
    return ahead, behind_n, log(git, f"--max-count={max_log}", f"{cur}..{target}")


def commits_behind(entries: list[list[str]], max_untagged: int) -> list[dict]:
    """The ``commits_behind`` objects of log ``entries``: every tagged
    commit, at most ``max_untagged`` untagged ones."""
    out = []
    untagged = 0
    for _mark, sha, author, date, subject, body, decorations in entries:
        names = [d.strip()[5:] for d in decorations.split(",") if d.strip().startswith("tag: ")]
        tag = min(names) if names else None  # the first in refname order
        if tag is None:
            untagged += 1
            if untagged > max_untagged:
                continue
        out.append({"sha": sha, "author": author, "date": date, "subject": subject,
                    "message": body.strip(), "tag": tag})
    return out
