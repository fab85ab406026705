"""Print job state tracking from Klippy's ``print_stats`` object.

Keeps ``print_stats`` in the Klippy subscription and turns its ``state``
transitions into internal events that history, the job queue and the
notifiers listen to:

    "job_state:started"    standby/complete/cancelled/error -> printing
                           (also -> paused: the print paused before Klippy's
                           first status tick; "paused" follows at once)
    "job_state:paused"     printing -> paused
    "job_state:resumed"    paused -> printing
    "job_state:complete"   -> complete
    "job_state:cancelled"  -> cancelled
    "job_state:error"      -> error
    "job_state:standby"    -> standby
    "job_state:state_changed" (old_state, new_state, prev_stats, new_stats)

Each specific event is emitted with ``(prev_stats, new_stats)``: complete
``print_stats`` dicts (filename, state, message, print_duration,
total_duration, filament_used, info) before and after the change.

``"job_state:init"`` (stats) is emitted each time Klippy is identified
(first connection and every reconnection) with the current print_stats,
so components can pick up a print that was already running (moonflask
restarted mid-print).  Spec: web_api.md "Basic Print Status".
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


DEFAULT_STATS: dict[str, Any] = {
    "filename": "", "total_duration": 0.0, "print_duration": 0.0,
    "filament_used": 0.0, "state": "standby", "message": "",
    "info": {"total_layer": None, "current_layer": None},
}
ACTIVE = ("printing", "paused")
FINISHED = ("complete", "cancelled", "error")


class JobState:
    """Tracks ``print_stats``; see the module docstring for the events.

    Attributes:
        stats: the last known print_stats (a full dict, DEFAULT_STATS keys).
        known: False while Klippy is disconnected (stats are stale).
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.stats: dict[str, Any] = dict(DEFAULT_STATS)
        self.known = False
        server.klippy.add_internal_subscription("job_state", {"print_stats", "virtual_sdcard"})
        server.events.on("klippy:identified", self._on_identified)
        server.events.on("klippy:disconnected", self._on_disconnected)
        server.events.on("klippy:status_update", self._on_status)

    def get_stats(self) -> dict[str, Any]:
        """A copy of the current print_stats."""
        out = dict(self.stats)
        out["info"] = dict(self.stats.get("info") or {})
        return out

    def is_printing(self) -> bool:
        """True while a print is printing or paused."""
        return self.known and self.stats.get("state") in ACTIVE

    def _on_identified(self) -> None:
        status = self.server.klippy.status.get("print_stats")
        stats = dict(DEFAULT_STATS)
        if status:
            stats.update(status)
        self.stats = stats
        self.known = True
        self.server.events.emit("job_state:init", self.get_stats())

    def _on_disconnected(self) -> None:
        self.known = False

    def _on_status(self, _status: dict, _eventtime: float) -> None:
        # Read Klippy's merged cache rather than the update itself: the
        # cache is also replaced wholesale when the Klippy subscription is
        # renewed (a client subscribes to a new object), and a transition
        # that happened in such a snapshot must not be missed.
        if not self.known:
            return
        cur = self.server.klippy.status.get("print_stats")
        if not cur:
            return
        prev = self.stats
        if all(prev.get(k) == v for k, v in cur.items()):
            return
        new = dict(DEFAULT_STATS)
        new.update(cur)
        new["info"] = dict(cur.get("info") or {})
        self.stats = new
        prev = dict(prev, info=dict(prev.get("info") or {}))
        old_state = prev.get("state")
        new_state = new.get("state")
        new = self.get_stats()
        if new_state == old_state:
            # A whole print between two status updates (250 ms apart) of a
            # printer that already was complete/cancelled/error: the state
            # did not change, but the file or the duration counter did.
            renewed = new_state in FINISHED and (
                new.get("filename") != prev.get("filename")
                or float(new.get("total_duration") or 0.0)
                < float(prev.get("total_duration") or 0.0))
            if not renewed:
                return
            old_state = prev["state"] = "standby"
        events = self.server.events
        if new_state in FINISHED and old_state not in ACTIVE:
            # A print shorter than Klippy's status interval goes from standby
            # straight to complete: report its start first (with the final
            # stats, as the reference does).
            events.emit("job_state:state_changed", old_state, "printing", prev, new)
            events.emit("job_state:started", prev, new)
            prev, old_state = dict(new, state="printing"), "printing"
        elif new_state == "paused" and old_state not in ACTIVE and new.get("filename"):
            # A print that pauses before Klippy's first status tick reports
            # it printing (BASE_PAUSE, PAUSE or M600 in its first lines):
            # standby/complete/cancelled/error -> paused.  It started first.
            events.emit("job_state:state_changed", old_state, "printing", prev, new)
            events.emit("job_state:started", prev, new)
            prev, old_state = dict(new, state="printing"), "printing"
        log.info("Job state changed: %s -> %s (%s)", old_state, new_state, new.get("filename"))
        events.emit("job_state:state_changed", old_state, new_state, prev, new)
        if new_state == "printing":
            name = "resumed" if old_state == "paused" else "started"
        elif new_state in ("paused", "complete", "cancelled", "error", "standby"):
            name = new_state
        else:
            return
        events.emit(f"job_state:{name}", prev, new)


def load_component(server: Any, _config: Any) -> JobState:
    """Create the job state tracker (always loaded)."""
    return JobState(server)
