#!/usr/bin/env python3
"""Start, wait for and stop the simulated printer (a real Klippy with no hardware).

Stdlib only: imported by the tests' conftest, the benchmark and
scripts/capture_reference.py, and run as a CLI by `make run`:

    python scripts/sim_printer.py --workdir DIR --gcodes DIR --socket PATH

Library use:

    import sim_printer
    h = sim_printer.start(workdir, gcodes_path)          # -> SimPrinter handle
    info = sim_printer.wait_ready(h.socket_path, 30)     # Klippy's `info` result
    sim_printer.request(h.socket_path, "objects/list")   # one-shot request
    sim_printer.stop(h)                                  # SIGTERM, then SIGKILL

Klippy's Python is taken from the `klippy_python` argument, else the
MOONFLASK_KLIPPY_PYTHON environment variable, else `.klippy-venv/bin/python`
in the repository root (see scripts/install_klippy.sh).  The shared directory
(printer.cfg, klipper.dict) is `../shared` beside the repository, unless
MOONFLASK_SHARED names another one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETX = b"\x03"

__all__ = [
    "SimPrinter", "shared_dir", "klipper_dir", "default_klippy_python",
    "start", "wait_ready", "stop", "kill", "restart", "request",
    "KlippyConnection",
]


def shared_dir() -> str:
    env = os.environ.get("MOONFLASK_SHARED")
    if env:
        return os.path.abspath(env)
    return os.path.abspath(os.path.join(REPO_ROOT, "..", "shared"))


def klipper_dir() -> str:
    return os.path.join(shared_dir(), "klipper")


def default_klippy_python() -> str:
    env = os.environ.get("MOONFLASK_KLIPPY_PYTHON")
    if env:
        return env
    return os.path.join(REPO_ROOT, ".klippy-venv", "bin", "python")


class SimPrinter:
    """Handle of a running Klippy process."""

    def __init__(self, proc, workdir, gcodes_path, socket_path, pty_path,
                 log_path, klippy_python):
        self.proc = proc
        self.workdir = workdir
        self.gcodes_path = gcodes_path
        self.socket_path = socket_path
        self.pty_path = pty_path
        self.log_path = log_path
        self.klippy_python = klippy_python
        self.die_with_parent = True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def __repr__(self):
        return "<SimPrinter pid=%s socket=%s alive=%s>" % (
            self.proc.pid, self.socket_path, self.alive())


def _write_config(workdir: str, gcodes_path: str) -> str:
    src = os.path.join(klipper_dir(), "printer.cfg")
    with open(src, "r", encoding="utf-8") as f:
        cfg = f.read()
    cfg = cfg.replace("${gcode_path}", os.path.abspath(gcodes_path))
    dst = os.path.join(workdir, "printer.cfg")
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cfg)
    os.replace(tmp, dst)
    shutil.copyfile(os.path.join(klipper_dir(), "klipper.dict"),
                    os.path.join(workdir, "klipper.dict"))
    return dst


def _die_with_parent():
    """preexec_fn: ask Linux to SIGTERM the child when its parent dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start(workdir: str, gcodes_path: str, klippy_python: str | None = None,
          socket_path: str | None = None,
          die_with_parent: bool = True) -> SimPrinter:
    """Write printer.cfg into `workdir` and start Klippy in the background.

    Returns at once; call wait_ready(handle.socket_path, timeout) next.
    The socket path defaults to WORKDIR/klippy.sock (keep it < 108 bytes).
    Klippy's stdout/stderr go to WORKDIR/klippy.stdout, its log to
    WORKDIR/klippy.log.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(gcodes_path, exist_ok=True)
    klippy_python = klippy_python or default_klippy_python()
    if not os.path.exists(klippy_python):
        raise FileNotFoundError(
            "Klippy python %r not found: run scripts/install_klippy.sh"
            % klippy_python)
    socket_path = os.path.abspath(socket_path or
                                  os.path.join(workdir, "klippy.sock"))
    if len(socket_path.encode()) >= 108:
        raise ValueError("unix socket path too long: %s" % socket_path)
    pty_path = os.path.join(workdir, "klippy.pty")
    log_path = os.path.join(workdir, "klippy.log")
    for p in (socket_path, pty_path):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    _write_config(workdir, gcodes_path)
    cmd = [klippy_python, "-m", "klippy.klippy", "printer.cfg",
           "-o", "/dev/null", "-d", "klipper.dict",
           "-a", socket_path, "-I", pty_path, "-l", log_path]
    out = open(os.path.join(workdir, "klippy.stdout"), "ab")
    try:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_die_with_parent
                                if die_with_parent else None)
    finally:
        out.close()
    handle = SimPrinter(proc, workdir, os.path.abspath(gcodes_path),
                        socket_path, pty_path, log_path, klippy_python)
    handle.die_with_parent = die_with_parent
    return handle


class KlippyConnection:
    """A minimal blocking client of Klippy's API socket (JSON + 0x03)."""

    def __init__(self, socket_path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(socket_path)
        except BaseException:
            self.sock.close()
            raise
        self._buf = b""
        self._ids = itertools.count(1)
        self.unsolicited: list = []

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, msg: dict):
        self.sock.sendall(json.dumps(msg).encode() + ETX)

    def recv(self, timeout: float | None = None) -> dict:
        if timeout is not None:
            self.sock.settimeout(timeout)
        while ETX not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("Klippy closed the connection")
            self._buf += data
        frame, _, self._buf = self._buf.partition(ETX)
        return json.loads(frame)

    def request(self, method: str, params: dict | None = None,
                timeout: float = 10.0) -> dict:
        """Send a request and return the whole reply ({"id", "result"|"error"}).

        Unsolicited messages received meanwhile are kept in self.unsolicited.
        """
        req_id = next(self._ids)
        self.send({"id": req_id, "method": method, "params": params or {}})
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply to %s" % method)
            msg = self.recv(left)
            if msg.get("id") == req_id:
                return msg
            self.unsolicited.append(msg)


def request(socket_path: str, method: str, params: dict | None = None,
            timeout: float = 10.0) -> dict:
    """One request on a fresh connection; returns `result`, raises on error."""
    with KlippyConnection(socket_path, timeout) as conn:
        reply = conn.request(method, params, timeout)
    if "error" in reply:
        raise RuntimeError("Klippy error on %s: %s" % (method, reply["error"]))
    return reply["result"]


def wait_ready(socket_path: str, timeout: float = 60.0,
               handle: SimPrinter | None = None) -> dict:
    """Poll Klippy's `info` until state == "ready"; return the info result.

    Raises TimeoutError (with the last state/message) after `timeout`, or
    RuntimeError at once if `handle`'s process has exited.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if handle is not None and handle.proc.poll() is not None:
            raise RuntimeError("Klippy exited with %s (see %s)"
                               % (handle.proc.returncode, handle.log_path))
        try:
            with KlippyConnection(socket_path, 2.0) as conn:
                while time.monotonic() < deadline:
                    reply = conn.request("info", {}, 2.0)
                    last = reply.get("result", reply)
                    if last.get("state") == "ready":
                        return last
                    if last.get("state") in ("error", "shutdown"):
                        raise RuntimeError("Klippy state %s: %s" % (
                            last.get("state"), last.get("state_message")))
                    time.sleep(0.05)
        except (OSError, ConnectionError, TimeoutError, ValueError):
            time.sleep(0.05)
    raise TimeoutError("Klippy not ready after %.1fs (last info: %r)"
                       % (timeout, last))


def stop(handle: SimPrinter, timeout: float = 5.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
    proc = handle.proc
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(handle)
    _cleanup(handle)
    return proc.returncode


def kill(handle: SimPrinter) -> int | None:
    """SIGKILL at once (how a crash looks to the API server)."""
    proc = handle.proc
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode


def _cleanup(handle: SimPrinter):
    for p in (handle.pty_path,):
        try:
            if os.path.islink(p):
                os.unlink(p)
        except OSError:
            pass


def restart(handle: SimPrinter, hard: bool = True) -> SimPrinter:
    """Kill (hard) or stop the process and start a new one with the same paths."""
    (kill if hard else stop)(handle)
    return start(handle.workdir, handle.gcodes_path, handle.klippy_python,
                 handle.socket_path, handle.die_with_parent)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the simulated printer "
                                 "(Klippy without hardware) in the foreground.")
    ap.add_argument("--workdir", required=True,
                    help="directory for printer.cfg, klippy.log, ...")
    ap.add_argument("--gcodes", required=True,
                    help="virtual_sdcard path (the gcodes root)")
    ap.add_argument("--socket", default=None,
                    help="Klippy API socket (default WORKDIR/klippy.sock)")
    ap.add_argument("--klippy-python", default=None,
                    help="python of the Klippy venv (default %s)"
                    % default_klippy_python())
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for ready")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    handle = start(args.workdir, args.gcodes, args.klippy_python, args.socket)
    stopping = []

    def on_signal(signum, frame):
        # Only signal the child here: waiting inside a signal handler can
        # deadlock with a wait() in progress in the main thread.
        stopping.append(time.monotonic())
        try:
            handle.proc.send_signal(signal.SIGTERM)
        except (ProcessLookupError, OSError):
            pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        try:
            info = wait_ready(handle.socket_path, args.timeout, handle)
        except Exception as e:
            if stopping:
                return 0
            print("klippy failed: %s" % e, file=sys.stderr, flush=True)
            return 1
        print("klippy ready in %.2fs: socket=%s pid=%d log=%s (%s)" % (
            time.monotonic() - t0, handle.socket_path, handle.pid,
            handle.log_path, info.get("software_version")), flush=True)
        while handle.proc.poll() is None:
            if stopping and time.monotonic() - stopping[0] > 5.0:
                kill(handle)
                break
            time.sleep(0.2)
        return 0 if stopping else handle.proc.returncode
    finally:
        stop(handle)


if __name__ == "__main__":
    sys.exit(main())
