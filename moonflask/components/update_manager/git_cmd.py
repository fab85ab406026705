"""Running git (through the ``sh`` library) durably and cooperatively.

Every command gets ``-c core.fsync=all -c core.fsyncMethod=fsync`` so that
objects, packs, refs and the index git writes are on disk before git
exits, and runs with ``GIT_TERMINAL_PROMPT=0`` and the C locale (messages are
parsed).  Spec: update_manager.md; issue 12 "every git command moonflask runs
writes durably".

``sh`` under gevent: sh closes file descriptors with ``os.close``, which
gevent's monkey-patching turns into a deferred close that waits on the hub;
in the forked child that fails ("epoll_wait: Bad file descriptor") and in
the parent the exec-status pipe is never seen closed.  :func:`_sh` gives
sh's module the unpatched ``posix.close`` (nothing of gevent watches the
pipes sh closes); its reader threads are greenlets and ``waitpid`` is
cooperative, so a running git never blocks the hub.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import posix
import shutil
import signal
import types
from typing import Any, Callable

import gevent
import gevent.os
import gevent.select

log = logging.getLogger(__name__)

FSYNC_OPTS = ("-c", "core.fsync=all", "-c", "core.fsyncMethod=fsync")
DEFAULT_TIMEOUT = 600.0  # seconds for one git command (a clone of a big repo)
_SH: Any = None


class GitError(Exception):
    """A git command failed.

    Attributes:
        command: the command line (without the fsync options).
        exit_code: git's exit status (None when it could not run).
        output: what it printed (stdout + stderr).
    """

    def __init__(self, command: str, exit_code: int | None, output: str) -> None:
        last = output.strip().splitlines()[-1] if output.strip() else ""
        super().__init__(f"git {command} failed ({exit_code}): {last}")
        self.command = command
        self.exit_code = exit_code
        self.output = output


def _sh() -> Any:
    global _SH
    if _SH is None:
        import sh
        globs = sh.Command.__init__.__globals__
        if not getattr(globs.get("os"), "_moonflask", False):
            real_os = types.ModuleType("os")
            real_os.__dict__.update(os.__dict__)
            real_os.close = posix.close
            real_os._moonflask = True  # type: ignore[attr-defined]
            globs["os"] = real_os
        logging.getLogger("sh").setLevel(logging.WARNING)  # one INFO line per command
        _SH = sh
    return _SH


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the forked child: get SIGKILL when moonflask dies, so that a git
    of a killed moonflask never races the journal recovery of the next one."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def git_env() -> dict[str, str]:
    """The environment git runs with."""
    env = dict(os.environ)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat", LC_ALL="C", LANG="C", GIT_ASKPASS="true")
    return env


def run_git(path: str | None, *args: str, on_line: Callable[[str], None] | None = None,
            timeout: float = DEFAULT_TIMEOUT, ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run ``git -C PATH ARGS`` and return its standard output.

    Args:
        path: the repository (None: no ``-C``, e.g. ``clone``).
        on_line: called with each line git prints (stdout and stderr,
            progress lines split on carriage returns), as it prints it.
        timeout: seconds before git is killed.
        ok_codes: exit codes that are not failures.
    Returns: stdout as text.
    Raises: GitError on another exit code, a timeout, or when git is missing.
    """
    cmdline = list(FSYNC_OPTS) + (["-C", path] if path else []) + list(args)
    shown = " ".join(args)
    if on_line is None and _SETPRIV:
        return _run_spawned(cmdline, shown, timeout, ok_codes)
    sh = _sh()
    out: list[str] = []
    err: list[str] = []

    def collector(store: list[str]) -> Callable[[str], None]:
        def cb(chunk: str) -> None:
            store.append(chunk)
            if on_line is not None:
                for line in chunk.replace("\r", "\n").splitlines():
                    if line.strip():
                        on_line(line.strip())
        return cb

    kw: dict[str, Any] = {}
    if on_line is not None:  # streamed (sh polls callbacks every 0.1 s: only when needed)
        kw = {"_out": collector(out), "_err": collector(err)}
    try:
        proc = sh.Command("git")(*cmdline, _bg=True, _bg_exc=False, _env=git_env(),
                                 _ok_code=list(ok_codes), _in=None, _tty_out=False,
                                 _encoding="utf-8", _decode_errors="replace",
                                 _preexec_fn=die_with_parent, **kw)
    except sh.CommandNotFound:
        raise GitError(shown, None, "git is not installed") from None
    try:
        with gevent.Timeout(timeout):
            proc.wait()
    except gevent.Timeout:
        proc.kill()
        raise GitError(shown, None, f"timed out after {timeout:.0f} s") from None
    except sh.ErrorReturnCode as exc:
        text = "".join(out) + "".join(err) if on_line is not None else \
            _text(exc.stdout) + _text(exc.stderr)
        raise GitError(shown, exc.exit_code, text) from None
    if on_line is None:
        out.append(_text(proc.stdout))
    log.debug("git -C %s %s: ok", path, shown)
    return "".join(out)


# The quiet commands (no ``on_line``: every command of a refresh) are
# spawned with posix_spawn (vfork + exec in C) instead of through sh, whose
# os.fork copies the page tables of the whole server while the hub waits
# (py-spy of bench/bench_update_manager.py: the fork was most of the
# refresh, and held status requests for hundreds of ms).  ``setpriv
# --pdeathsig KILL`` gives git the same parent-death signal as
# :func:`die_with_parent`; the child is watched by gevent's child watcher,
# so waiting for it and reading its pipes are cooperative.
_SETPRIV = shutil.which("setpriv")
_SIGCHLD_LOOPS: set[int] = set()


# Commands that never write to the repository: a leftover of a killed
# moonflask cannot hold a lock or race a recovery, so they skip setpriv
# (one exec less: a refresh runs a dozen of them per repo).
_READ_ONLY = frozenset(("rev-parse", "describe", "rev-list", "for-each-ref", "log",
                        "merge-base", "fsck", "cat-file", "show", "ls-files", "ls-tree"))


def _read_only(args: list[str]) -> bool:
    """True when ``git ARGS`` (after ``-C PATH``) only reads."""
    if args[:1] == ["-C"]:
        args = args[2:]
    while args[:1] == ["-c"]:  # configuration of this command only
        args = args[2:]
    no_locks = args[:1] == ["--no-optional-locks"]
    if no_locks:
        args = args[1:]
    if not args:
        return False
    cmd, rest = args[0], args[1:]
    if cmd == "status":  # writes the refreshed index, unless told not to
        return no_locks
    if cmd in _READ_ONLY:
        return not (cmd == "fsck" and "--lost-found" in rest)
    if cmd == "config":
        return bool(rest) and rest[0] in ("--get", "--get-all", "--get-regexp", "--list", "-l")
    if cmd == "remote":
        return not rest or rest[0] in ("get-url", "-v", "show")
    if cmd == "tag":
        return bool(rest) and rest[0] in ("--list", "-l")
    return False


def _spawn(argv: list[str], env: dict[str, str], out_w: int, err_w: int) -> int:
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    # gevent's posix_spawn: the child watched, for the cooperative waitpid
    return gevent.os.posix_spawn(argv[0], argv, env, file_actions=actions)


def _run_spawned(cmdline: list[str], shown: str, timeout: float,
                 ok_codes: tuple[int, ...]) -> str:
    """:func:`run_git` without a line callback: spawn git, collect stdout and
    stderr, wait cooperatively.  Same returns and errors as run_git."""
    git = shutil.which("git")
    if git is None:
        raise GitError(shown, None, "git is not installed")
    argv = [git] + cmdline if _read_only(cmdline[len(FSYNC_OPTS):]) else \
        [_SETPRIV, "--pdeathsig", "KILL", "--", git] + cmdline
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    # The loop's SIGCHLD handler must exist before the child can exit (else
    # the exit of a quick git spawned first in a process goes unseen).
    loop = gevent.get_hub().loop
    if id(loop) not in _SIGCHLD_LOOPS and hasattr(loop, "install_sigchld"):
        loop.install_sigchld()
        _SIGCHLD_LOOPS.add(id(loop))
    try:
        pid = _spawn(argv, git_env(), out_w, err_w)
    except OSError as err:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise GitError(shown, None, f"git could not run: {err.strerror}") from None
    os.close(out_w)
    os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    open_fds = [out_r, err_r]
    for fd in open_fds:
        os.set_blocking(fd, False)
    try:
        with gevent.Timeout(timeout):
            while open_fds:
                ready, _, _ = gevent.select.select(open_fds, [], [])
                for fd in ready:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if data:
                        chunks[fd].append(data)
                    else:
                        open_fds.remove(fd)
            _, status = gevent.os.waitpid(pid, 0)
    except gevent.Timeout:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError as err:
            if err.errno != errno.ESRCH:
                raise
        gevent.spawn(gevent.os.waitpid, pid, 0)  # reap it
        raise GitError(shown, None, f"timed out after {timeout:.0f} s") from None
    finally:
        os.close(out_r)
        os.close(err_r)
    code = os.waitstatus_to_exitcode(status)
    out = _text(b"".join(chunks[out_r]))
    if code not in ok_codes:
        raise GitError(shown, code, out + _text(b"".join(chunks[err_r])))
    log.debug("git %s: ok", shown)
    return out
