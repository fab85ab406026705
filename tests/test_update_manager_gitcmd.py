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
