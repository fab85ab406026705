"""Shared benchmark plumbing: start the simulated printer, moonflask and the
reference Moonraker against it, and print figures side by side.

Each benchmark measures both servers in the same run, one after the other,
so the ratios are meaningful on a shared, noisy machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "tests"))
import sim_printer  # noqa: E402
from helpers import free_port  # noqa: E402

REFERENCE_PYTHON = os.environ.get("MOONFLASK_REFERENCE_PYTHON",
                                  os.path.join(REPO, ".reference-venv", "bin", "python"))


class ServerProc:
    """One API server process (moonflask or Moonraker) with its own data path.

    Args:
        kind: ``moonflask`` (``python -m moonflask``), ``gunicorn`` (moonflask
            under ``gunicorn -c gunicorn.conf.py wsgi:app``), ``baseline``
            (``python -m moonflask`` from the checkout in $MOONFLASK_BENCH_BASELINE,
            to compare a change in the same run) or ``moonraker``.
        root: a folder for its data.
        klippy_socket: the simulated printer's socket.
        config: extra moonraker.conf text.
    """

    def __init__(self, kind: str, root: str, klippy_socket: str, config: str = "") -> None:
        self.kind = kind
        self.data = os.path.join(root, kind)
        for sub in ("config", "logs", "gcodes", "database", "comms"):
            os.makedirs(os.path.join(self.data, sub), exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/websocket"
        with open(os.path.join(self.data, "config", "moonraker.conf"), "w") as fh:
            fh.write(f"[server]\nhost: 127.0.0.1\nport: {self.port}\n"
                     f"klippy_uds_address: {klippy_socket}\n"
                     "max_websocket_connections: 300\n"
                     "[authorization]\ntrusted_clients:\n  127.0.0.0/8\n"
                     # Offline: the announcement feeds would otherwise be fetched.
                     "[announcements]\ndev_mode: True\n"
                     + config)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProc":
        """Start it and wait for klippy_state ready."""
        log = os.path.join(self.data, "logs", "moonraker.log")
        env = None
        cwd = REPO
        if self.kind == "baseline":
            cmd = [sys.executable, "-m", "moonflask", "-d", self.data, "-l", log]
            cwd = os.environ["MOONFLASK_BENCH_BASELINE"]
        elif self.kind == "moonflask":
            cmd = [sys.executable, "-m", "moonflask", "-d", self.data, "-l", log]
        elif self.kind == "gunicorn":
            cmd = [os.path.join(os.path.dirname(sys.executable), "gunicorn"),
                   "-c", "gunicorn.conf.py", "wsgi:app"]
            env = dict(os.environ, MOONFLASK_DATA_PATH=self.data)
        else:
            cmd = [REFERENCE_PYTHON, "-m", "moonraker", "-d", self.data, "-l", log]
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                info = requests.get(self.url + "/server/info", timeout=1).json()["result"]
                if info["klippy_state"] == "ready":
                    return self
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.kind} did not become ready")

    def server_pid(self) -> int:
        """The pid serving requests (gunicorn: its one worker, else the process)."""
        if self.kind == "gunicorn":
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                children = fh.read().split()
            if children:
                return int(children[0])
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident set size of the server process (gunicorn: its worker), KiB."""
        with open(f"/proc/{self.server_pid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used, seconds."""
        with open(f"/proc/{self.server_pid()}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Bench:
    """A simulated printer plus both servers, for the duration of a ``with``."""

    def __init__(self, config: "str | dict[str, str]" = "", gunicorn: bool = False) -> None:
        self.config = config  # one text for every server, or {kind: text}
        self.kinds = ("moonflask", "moonraker") + (("gunicorn",) if gunicorn else ()) + (
            ("baseline",) if os.environ.get("MOONFLASK_BENCH_BASELINE") else ())

    def __enter__(self) -> "Bench":
        if not os.path.exists(REFERENCE_PYTHON):
            raise SystemExit(f"reference Moonraker not installed at {REFERENCE_PYTHON}: "
                             "run `make reference` (scripts/install_reference.sh)")
        self.root = tempfile.mkdtemp(prefix="mfbench-")
        gcodes = os.path.join(self.root, "gcodes")
        self.printer = sim_printer.start(os.path.join(self.root, "klippy"), gcodes)
        sim_printer.wait_ready(self.printer.socket_path, 60, self.printer)
        self.servers = {kind: ServerProc(kind, self.root, self.printer.socket_path,
                                         self.config.get(kind, "")
                                         if isinstance(self.config, dict) else self.config)
                        for kind in self.kinds}
        for srv in self.servers.values():
            os.rmdir(srv.data + "/gcodes")
            os.symlink(gcodes, srv.data + "/gcodes")
            srv.start()
        time.sleep(3)  # let both settle (start-up scans, first samples)
        return self

    def __exit__(self, *exc: Any) -> None:
        for srv in self.servers.values():
            srv.stop()
        sim_printer.stop(self.printer)
        shutil.rmtree(self.root, ignore_errors=True)


def report(rows: list[tuple]) -> None:
    """Print ``(figure, moonflask, moonraker, higher_is_better[, target])``
    rows with the moonflask/Moonraker ratio and whether the target ratio is
    met (``target``, 1.0 when not given: at least level with Moonraker;
    None: no target, the figure is context)."""
    print(f"{'figure':<52}{'moonflask':>12}{'moonraker':>12}{'ratio':>8}  target")
    for name, ours, ref, higher, *rest in rows:
        target = rest[0] if rest else 1.0
        ratio = ours / ref if ref else float("inf")
        digits = 2 if max(abs(ours), abs(ref)) < 10 else 1
        line = f"{name:<52}{ours:>12.{digits}f}{ref:>12.{digits}f}{ratio:>8.2f}  "
        if target is None:              # a figure shown for context, with no target
            print(line + "(no target)")
            continue
        ok = ratio >= target if higher else ratio <= target
        print(line + f"{'met' if ok else 'MISSED'} ({'>=' if higher else '<='} {target:g})")


def measure_both(bench: Bench, fn: Callable[[ServerProc], float]) -> tuple[float, float]:
    """Run ``fn`` on moonflask then on Moonraker; returns both figures."""
    return fn(bench.servers["moonflask"]), fn(bench.servers["moonraker"])
