"""The ``proc_stats`` component: a 1 s sampler of moonflask's own CPU and
memory, system CPU per core, memory, network counters, CPU temperature and
Raspberry Pi throttling flags.

Serves ``machine.proc_stats`` and sends ``notify_proc_stat_update`` every
sample and ``notify_cpu_throttled`` when the throttled flags change.
Spec: web_api.md "Get Moonraker Process Stats", "Moonraker Process Statistic
Update", "CPU Throttled".

Cost: every sample is a handful of small reads of /proc with ``os.read``
(no subprocess; ``vcgencmd`` runs only where it exists, every 5 s), well
under 1 % of a core (``bench/bench_idle_cpu.py`` measures it).
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import subprocess
import time
from typing import Any



log = logging.getLogger(__name__)


SAMPLE_INTERVAL = 1.0       # seconds
SAMPLE_COUNT = 30           # moonraker_stats samples kept
THROTTLE_INTERVAL = 5.0     # seconds between `vcgencmd get_throttled`
THERMAL_PATH = "/sys/class/thermal/thermal_zone0/temp"
THROTTLED_FLAGS = {
    1 << 0: "Under-Voltage Detected",
    1 << 1: "Frequency Capped",
    1 << 2: "Currently Throttled",
    1 << 3: "Temperature Limit Active",
    1 << 16: "Previously Under-Volted",
    1 << 17: "Previously Frequency Capped",
    1 << 18: "Previously Throttled",
    1 << 19: "Previously Temperature Limited",
}
_NET_FIELDS = ("rx_bytes", "rx_packets", "rx_errs", "rx_drop",
               "tx_bytes", "tx_packets", "tx_errs", "tx_drop")
_NET_COLUMNS = (0, 1, 2, 3, 8, 9, 10, 11)   # /proc/net/dev columns of _NET_FIELDS
_NET_ORDER = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets",
              "rx_errs", "tx_errs", "rx_drop", "tx_drop")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def read_small(path: str) -> bytes | None:
    """The whole content of a small (< 64 KiB) file, or None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_throttled(bits: int) -> dict[str, Any]:
    """``{"bits": int, "flags": [str, ...]}`` for a ``get_throttled`` value."""
    return {"bits": bits, "flags": [name for bit, name in THROTTLED_FLAGS.items() if bits & bit]}


class ProcStats:
    """The sampler and its 30-sample history.

    Args:
        server: the :class:`moonflask.app.Server`.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.samples: collections.deque = collections.deque(maxlen=SAMPLE_COUNT)
        self.cpu_temp: float | None = None
        self.network: dict[str, dict[str, Any]] = {}
        self.system_cpu_usage: dict[str, float] = {}
        self.system_memory: dict[str, int] = {}
        self.throttled_state: dict[str, Any] | None = None
        self._vcgencmd = shutil.which("vcgencmd")
        self._last_throttle_check = 0.0
        self._prev_proc: tuple[float, float] | None = None
        self._prev_cpu: dict[str, tuple[int, int]] = {}
        self._prev_net: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._has_thermal = os.path.exists(THERMAL_PATH)
        self._worker: Any = None
        server.events.on("server:started", self.start)
        server.events.on("server:shutdown", self.stop)

    # -- lifetime ---------------------------------------------------------
    def start(self) -> None:
        """Start the sampler greenlet (on ``server:started``)."""
        if self._worker is None:
            from ..workers import proc_stats as sampler
            self._worker = self.server.workers.start("proc_stats", sampler.run, self)

    def stop(self) -> None:
        """Stop the sampler (on ``server:shutdown``)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def publish(self) -> None:
        """Take a sample and send it as ``notify_proc_stat_update``; check
        the Raspberry Pi throttle flags."""
        sample = self.sample()
        self.server.events.notify("notify_proc_stat_update", [{
            "moonraker_stats": sample,
            "cpu_temp": self.cpu_temp,
            "network": self.network,
            "system_cpu_usage": self.system_cpu_usage,
            "system_memory": self.system_memory,
            "websocket_connections": self.server.connections.websocket_count(),
        }])
        self._check_throttled()

    # -- sampling ---------------------------------------------------------
    def sample(self) -> dict[str, Any]:
        """Take one sample; returns the ``moonraker_stats`` entry
        ``{"time", "cpu_usage" (% of one core), "memory" (RSS), "mem_units": "kB"}``
        and refreshes the system figures."""
        now = time.time()
        mono = time.monotonic()
        cpu_time = time.process_time()
        usage = 0.0
        if self._prev_proc is not None:
            dt = mono - self._prev_proc[0]
            if dt > 0:
                usage = round((cpu_time - self._prev_proc[1]) / dt * 100, 2)
        self._prev_proc = (mono, cpu_time)
        statm = read_small("/proc/self/statm")
        memory = int(statm.split()[1]) * _PAGE_KB if statm else 0
        entry = {"time": now, "cpu_usage": usage, "memory": memory, "mem_units": "kB"}
        self.samples.append(entry)
        self._sample_system_cpu()
        self._sample_network(mono)
        self._sample_memory()
        if self._has_thermal:
            raw = read_small(THERMAL_PATH)
            try:
                self.cpu_temp = round(int(raw) / 1000, 3) if raw else None
            except ValueError:
                self.cpu_temp = None
        return entry

    def _sample_system_cpu(self) -> None:
        raw = read_small("/proc/stat")
        if not raw:
            return
        usage: dict[str, float] = {}
        prev = self._prev_cpu
        for line in raw.split(b"\n"):
            if not line.startswith(b"cpu"):
                break
            parts = line.split()
            name = parts[0].decode()
            vals = [int(v) for v in parts[1:9]]
            total = sum(vals)
            idle = vals[3] + vals[4]
            old = prev.get(name)
            prev[name] = (total, idle)
            if old is not None:
                d_total = total - old[0]
                usage[name] = round((1 - (idle - old[1]) / d_total) * 100, 2) if d_total else 0.0
            else:
                usage[name] = 0.0
        self.system_cpu_usage = usage

    def _sample_network(self, mono: float) -> None:
        raw = read_small("/proc/net/dev")
        if not raw:
            self.network = {}
            return
        counters: dict[str, tuple[int, int]] = {}
        network: dict[str, dict[str, Any]] = {}
        prev = self._prev_net
        for line in raw.split(b"\n")[2:]:
            name, sep, rest = line.partition(b":")
            if not sep:
                continue
            iface = name.strip().decode()
            cols = rest.split()
            vals = {f: int(cols[c]) for f, c in zip(_NET_FIELDS, _NET_COLUMNS)}
            entry: dict[str, Any] = {k: vals[k] for k in _NET_ORDER}
            bandwidth = 0.0
            if prev is not None and iface in prev[1]:
                dt = mono - prev[0]
                old_rx, old_tx = prev[1][iface]
                if dt > 0:
                    delta = (vals["rx_bytes"] - old_rx) + (vals["tx_bytes"] - old_tx)
                    bandwidth = round(max(delta, 0) / dt, 2)
            entry["bandwidth"] = bandwidth
            counters[iface] = (vals["rx_bytes"], vals["tx_bytes"])
            network[iface] = entry
        self._prev_net = (mono, counters)
        self.network = network

    def _sample_memory(self) -> None:
        raw = read_small("/proc/meminfo")
        if not raw:
            return
        total = avail = None
        for line in raw.split(b"\n"):
            if line.startswith(b"MemTotal:"):
                total = int(line.split()[1])
            elif line.startswith(b"MemAvailable:"):
                avail = int(line.split()[1])
                break
        if total is not None and avail is not None:
            self.system_memory = {"total": total, "available": avail, "used": total - avail}

    def _check_throttled(self) -> None:
        if self._vcgencmd is None:
            return
        now = time.monotonic()
        if now - self._last_throttle_check < THROTTLE_INTERVAL:
            return
        self._last_throttle_check = now
        try:
            out = subprocess.run([self._vcgencmd, "get_throttled"], capture_output=True,
                                 timeout=5, check=True).stdout.decode()
            bits = int(out.strip().split("=")[-1], 16)
        except (OSError, subprocess.SubprocessError, ValueError) as err:
            log.info("vcgencmd get_throttled failed (%s); throttle monitoring off", err)
            self._vcgencmd = None
            return
        state = parse_throttled(bits)
        changed = self.throttled_state is not None and state != self.throttled_state
        first_active = self.throttled_state is None and bits != 0
        self.throttled_state = state
        if changed or first_active:
            self.server.events.notify("notify_cpu_throttled", [state])

    # -- queries ----------------------------------------------------------
    def system_uptime(self) -> float | None:
        """Seconds since boot (/proc/uptime), or None."""
        raw = read_small("/proc/uptime")
        try:
            return float(raw.split()[0]) if raw else None
        except (ValueError, IndexError):
            return None

    def get_stats(self) -> dict[str, Any]:
        """The ``machine.proc_stats`` result (spec shape, plus the reference's
        ``system_memory`` and the extra per-interface packet counters)."""
        if not self.samples:
            self.sample()
        return {
            "moonraker_stats": list(self.samples),
            "throttled_state": self.throttled_state,
            "cpu_temp": self.cpu_temp,
            "network": self.network,
            "system_cpu_usage": self.system_cpu_usage,
            "system_uptime": self.system_uptime(),
            "system_memory": self.system_memory,
            "websocket_connections": self.server.connections.websocket_count(),
        }


def load_component(server: Any, _section: Any) -> ProcStats:
    """Build the component (always loaded).  Spec: web_api.md "Get Moonraker
    Process Stats"."""
    return ProcStats(server)
