"""Run the real Spoolman (v0.26.1, ``../shared/spoolman/start.sh``) for tests
and capture scripts: SQLite in a data folder, API on 127.0.0.1:PORT.

``start.sh`` creates its venv on first use (``pip install`` of Spoolman's
pinned requirements, ~15 s); the venv defaults to ``REPO/.spoolman-venv``
(``MOONFLASK_SPOOLMAN_VENV`` overrides it) so that later runs reuse it.

    svc = SpoolmanService(data_dir, port).start()
    svc.api("POST", "/vendor", {"name": "V"})
    svc.stop(); svc.start()      # same data, same port
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import requests

import sim_printer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_script() -> str:
    """The path of start.sh in the shared folder."""
    return os.path.join(sim_printer.shared_dir(), "spoolman", "start.sh")


def default_venv() -> str:
    """Where Spoolman's venv lives (created by start.sh on first use)."""
    return os.environ.get("MOONFLASK_SPOOLMAN_VENV") or os.path.join(REPO_ROOT, ".spoolman-venv")


class SpoolmanService:
    """One Spoolman process on 127.0.0.1:``port`` with its SQLite in ``data_dir``."""

    def __init__(self, data_dir: str, port: int, venv: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.venv = venv or default_venv()
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> "SpoolmanService":
        """Start it and wait until ``/api/v1/health`` answers (the first
        start installs the venv: generous timeout)."""
        os.makedirs(self.data_dir, exist_ok=True)
        out = open(os.path.join(self.data_dir, "start.stdout"), "ab")
        self.proc = subprocess.Popen(["bash", start_script(), self.venv, self.data_dir,
                                      str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Spoolman exited with {self.proc.returncode}, see "
                                   f"{self.data_dir}/start.stdout")
            try:
                if requests.get(self.url + "/api/v1/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("Spoolman did not start")

    def stop(self) -> None:
        """SIGTERM its process group (SIGKILL after 10 s) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call ``/api/v1`` + ``path``; returns the decoded JSON (raises on an error status)."""
        resp = requests.request(method, self.url + "/api/v1" + path, json=body, timeout=10)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def new_spool(self, name: str = "PLA") -> dict[str, Any]:
        """Create a vendor, a 1.75 mm PLA filament and a spool of it; returns the spool."""
        vendor = self.api("POST", "/vendor", {"name": f"Vendor {name}"})
        fil = self.api("POST", "/filament", {"name": name, "vendor_id": vendor["id"],
                                             "material": "PLA", "density": 1.24,
                                             "diameter": 1.75, "weight": 1000})
        return self.api("POST", "/spool", {"filament_id": fil["id"]})

    def used_length(self, spool_id: int) -> float:
        """The spool's ``used_length`` (mm)."""
        return float(self.api("GET", f"/spool/{spool_id}")["used_length"])
