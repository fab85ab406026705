"""run_git's spawned path (the quiet commands of a refresh) under gevent, as
the server runs it: output, exit codes, errors, timeouts, concurrency, and
the hub kept free while git runs (bench/bench_update_manager.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""\
    from gevent import monkey
    monkey.patch_all()
    import sys, time
    sys.path.insert(0, %(root)r)
    import gevent
    from moonflask.components.update_manager.git_cmd import GitError, run_git, _read_only
    repo = %(repo)r
    head = run_git(repo, "rev-parse", "HEAD").strip()
    assert len(head) == 40, head
    # a failure: exit code and stderr in the error, stdout not mixed in
    try:
        run_git(repo, "rev-parse", "--verify", "no-such-ref")
        raise AssertionError("no error")
    except GitError as err:
        assert err.exit_code == 128 and "single revision" in err.output, (err.exit_code, err.output)
    assert run_git(repo, "config", "--get", "no.such", ok_codes=(0, 1)) == ""
    # a writing command (through setpriv) works as well
    run_git(repo, "config", "bench.key", "v1")
    assert run_git(repo, "config", "--get", "bench.key").strip() == "v1"
    # a timeout kills git and says so
    try:
        run_git(None, "-c", "alias.slow=!sleep 5", "-C", repo, "slow", timeout=0.3)
        raise AssertionError("no timeout")
    except GitError as err:
        assert "timed out" in str(err), str(err)
    # many at once: every answer right; the hub keeps ticking meanwhile
    ticks = []
    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)
    tk = gevent.spawn(ticker)
    jobs = [gevent.spawn(run_git, repo, "rev-parse", "HEAD") for _ in range(40)]
    gevent.joinall(jobs, raise_error=True)
    tk.kill()
    assert all(j.value.strip() == head for j in jobs)
    assert len(ticks) >= 2
    assert _read_only(["-C", repo, "log", "-1"]) and not _read_only(["-C", repo, "fetch"])
    assert not _read_only(["-C", repo, "remote", "set-url", "o", "x"])
    assert _read_only(["-C", repo, "remote", "-v"]) and not _read_only(["clone", "a", "b"])
    assert _read_only(["-C", repo, "--no-optional-locks", "status"])
    assert not _read_only(["-C", repo, "status"])
    assert _read_only(["-C", repo, "-c", "core.commitGraph=false", "fsck"])
    print("ok")
""")


def test_run_git_spawned(tmp_path):
    repo = str(tmp_path / "repo")
    env = dict(os.environ, GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@example.com")
    subprocess.run(["git", "init", "-q", repo], check=True)
    subprocess.run(["git", "-C", repo, "commit", "-q", "--allow-empty", "-m", "one"],
                   check=True, env=env)
    script = tmp_path / "run_git.py"
    script.write_text(SCRIPT % {"root": ROOT, "repo": repo})
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


REFRESH_SCRIPT = textwrap.dedent("""\
    from gevent import monkey
    monkey.patch_all()
    import faulthandler, os, subprocess, sys
    faulthandler.dump_traceback_later(100, exit=True)  # a hang shows where
    sys.path.insert(0, %(root)r)
    from moonflask.components.update_manager import git_deploy
    from moonflask.components.update_manager.git_deploy import GitRepo
    from moonflask.components.update_manager.git_files import read_ref
    from moonflask.components.update_manager.journal import Journal
    path, url, data = %(path)r, %(url)r, %(data)r

    def git(*args):
        return subprocess.run(["git", "-C", path, *args], check=True, capture_output=True,
                              text=True).stdout

    class Server:
        debug = False

    class Manager:
        server = Server()
        journal = Journal(data)
        refresh_interval = 672

    git_deploy.MAX_LOG = 3  # both ways of git_read.compare: one log (< 6 commits), and the long one
    repo = GitRepo(Manager(), "ext", None, path, {"origin": url})
    for behind_n in (2, 9):  # origin has 2 (then 9) commits the local branch lacks
        if behind_n == 9:
            for i in range(7):
                subprocess.run(["git", "-C", %(author)r, "commit", "-q", "--allow-empty",
                                "-m", f"more {i}"], check=True)
            subprocess.run(["git", "-C", %(author)r, "push", "-q", "origin", "master"],
                           check=True)
        repo.refresh()
        remote = git("rev-parse", "origin/master").strip()
        assert repo.remote_hash == remote and repo.current_hash == git("rev-parse", "HEAD").strip()
        ahead, behind = (int(c) for c in git("rev-list", "--left-right", "--count",
                                               f"HEAD...{remote}").split())
        assert (ahead, behind) == (1, behind_n), (ahead, behind)
        assert repo.commits_behind_count == behind
        want = git("log", "--format=%%H", "--max-count=3", f"HEAD..{remote}").split()
        assert [c["sha"] for c in repo.commits_behind] == want, (repo.commits_behind, want)
        assert any("local commits" in a for a in repo.anomalies), repo.anomalies
        # the dirty files named as porcelain v1 names them (renames, quoting)
        v1 = git("status", "--porcelain").splitlines()
        modified = [ln[3:] for ln in v1 if not ln.startswith("??")]
        untracked = [ln[3:] for ln in v1 if ln.startswith("??")]
        assert repo.warnings == ["Repo is dirty.  Detected the following modified files: "
                                 f"{modified}"], (repo.warnings, modified)
        assert f"Repo has untracked source files: {untracked}" in repo.anomalies
        assert repo.full_version.endswith("-dirty") and repo.is_dirty and not repo.pristine
        assert not repo.corrupt
    # refs read from their files, loose or packed, as git reads them
    assert read_ref(path, "refs/remotes/origin/master") == remote
    git("pack-refs", "--all")
    assert read_ref(path, "refs/remotes/origin/master") == remote
    assert read_ref(path, "refs/remotes/origin/nothing") is None
    # the remote list follows a changed configuration
    git("remote", "set-url", "origin", url + "/")
    repo.refresh()
    assert repo.remote_url == url + "/", repo.remote_url
    print("ok")
""")


def test_refresh_reads_as_git(tmp_path):
    """A refresh's merged and cached reads (one status, one describe, one
    log for both sides, refs read from their files, the remote list kept
    while the configuration is unchanged) give what git's own commands say."""
    env = dict(os.environ, GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@example.com")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], check=True, env=env, capture_output=True)
    origin, author, path = (str(tmp_path / n) for n in ("origin.git", "author", "ext"))
    git("init", "-q", "--bare", "-b", "master", origin)
    git("clone", "-q", origin, author)
    for name in ("a.txt", "b c.txt", "d.txt"):
        (tmp_path / "author" / name).write_text(name)
    git("-C", author, "add", "-A")
    git("-C", author, "commit", "-q", "-m", "one")
    git("-C", author, "tag", "v0.1.0")
    git("-C", author, "push", "-q", "--tags", "origin", "master")
    git("clone", "-q", origin, path)
    for i in range(2):
        git("-C", author, "commit", "-q", "--allow-empty", "-m", f"upstream {i}")
    git("-C", author, "push", "-q", "origin", "master")
    git("-C", path, "commit", "-q", "--allow-empty", "-m", "local")
    git("-C", path, "mv", "a.txt", "renamed.txt")
    (tmp_path / "ext" / "b c.txt").write_text("changed")
    os.unlink(tmp_path / "ext" / "d.txt")
    (tmp_path / "ext" / "new file.txt").write_text("untracked")
    script = tmp_path / "refresh.py"
    script.write_text(REFRESH_SCRIPT % {"root": ROOT, "path": path, "url": origin,
                                        "author": author, "data": str(tmp_path / "data")})
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
