"""Temperature and G-code stores (the ``data_store`` component).

Spec: server.md "Request Cached Temperature Data", "Request Cached GCode
Responses"; config ``[data_store] temperature_store_size`` (samples, one per
second, default 1200) and ``gcode_store_size`` (messages, default 1000).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import gevent


log = logging.getLogger(__name__)

# status field -> store key
TRACKED_FIELDS = {"temperature": "temperatures", "target": "targets",
                  "power": "powers", "speed": "speeds"}


class DataStore:
    """Ring buffers of sensor history and of G-code traffic.

    Args:
        server: the Server (klippy, events).
        temperature_store_size: samples kept per sensor field.
        gcode_store_size: G-code messages kept.
    """

    def __init__(self, server: Any, temperature_store_size: int = 1200,
                 gcode_store_size: int = 1000) -> None:
        self.server = server
        self.temp_size = temperature_store_size
        self.gcode_store: deque[dict[str, Any]] = deque(maxlen=gcode_store_size)
        self.sensors: dict[str, dict[str, deque]] = {}
        self.monitors: set[str] = set()
        self._latest: dict[str, dict[str, Any]] = {}
        self._sampler: Any = None
        server.events.on("klippy:ready", self._on_ready)
        server.events.on("klippy:gcode_response", self._on_gcode_response)
        server.events.on("klippy:status_update", self._on_status)

    # -- gcode -----------------------------------------------------------
    def _on_gcode_response(self, response: str) -> None:
        self.gcode_store.append({"message": response, "time": time.time(), "type": "response"})
        self.server.events.notify("notify_gcode_response", [response])

    def record_command(self, script: str) -> None:
        """Remember a G-code command sent through ``printer.gcode.script``."""
        self.gcode_store.append({"message": script, "time": time.time(), "type": "command"})

    def get_gcode_store(self, count: int | None = None) -> list[dict[str, Any]]:
        """The newest ``count`` entries (all when None), oldest first."""
        items = list(self.gcode_store)
        if count is not None:
            items = items[-count:] if count > 0 else []
        return items

    # -- temperatures ----------------------------------------------------
    def _on_ready(self) -> None:
        gevent.spawn(self._init_sensors)

    def _init_sensors(self) -> None:
        klippy = self.server.klippy
        try:
            heaters = klippy.request("objects/query", {"objects": {"heaters": None}})
        except Exception as err:
            log.info("temperature store: unable to query heaters: %s", err)
            return
        hstatus = heaters.get("status", {}).get("heaters", {})
        sensors = list(hstatus.get("available_sensors", []))
        monitors = [m for m in hstatus.get("available_monitors", []) if m not in sensors]
        names = sensors + monitors
        try:
            result = klippy.request("objects/query", {"objects": {n: None for n in names}})
        except Exception as err:
            log.info("temperature store: unable to query sensors: %s", err)
            return
        status = result.get("status", {})
        new: dict[str, dict[str, deque]] = {}
        for name in names:
            fields = status.get(name, {})
            old = self.sensors.get(name, {})
            new[name] = {key: old.get(key, deque(maxlen=self.temp_size))
                         for field, key in TRACKED_FIELDS.items() if field in fields}
            self._latest[name] = {f: fields.get(f) for f in TRACKED_FIELDS if f in fields}
        self.sensors = new
        self.monitors = set(monitors)
        klippy.add_internal_subscription("data_store", set(names))
        if self._sampler is None:
            from ..workers import temperature_store
            self._sampler = self.server.workers.start("temperature_store",
                                                      temperature_store.run, self)

    def _on_status(self, status: dict, eventtime: float) -> None:
        for name, fields in status.items():
            latest = self._latest.get(name)
            if latest is None:
                continue
            for field in TRACKED_FIELDS:
                if field in fields:
                    latest[field] = fields[field]

    def sample(self) -> None:
        """Append the latest value of every tracked field to its ring buffer
        (rounded to 0.01 °C); nothing while Klippy is not ready."""
        if self.server.klippy.state != "ready":
            return
        for name, store in self.sensors.items():
            latest = self._latest.get(name, {})
            for field, key in TRACKED_FIELDS.items():
                if key in store:
                    value = latest.get(field)
                    if isinstance(value, float):
                        value = round(value, 2)
                    store[key].append(value)

    def get_temperature_store(self, include_monitors: bool = False) -> dict[str, Any]:
        """``{sensor: {"temperatures": [...], "targets": [...], ...}}``,
        oldest sample first; monitors only with ``include_monitors``."""
        return {name: {key: list(values) for key, values in store.items()}
                for name, store in self.sensors.items()
                if include_monitors or name not in self.monitors}
