"""The job queue (``[job_queue]``).  Spec: web_api.md "Job Queue APIs",
"Appendix / Websocket notifications / Job Queue Changed".

A FIFO of G-code files (relative to the ``gcodes`` root) loaded one after
the other.  ``queue_state`` is one of:

- ``ready``: the next job loads when the current one completes
  (``automatic_transition``) or when the queue is started;
- ``loading``: waiting ``job_transition_delay`` seconds and running
  ``job_transition_gcode`` before the next job;
- ``starting``: sending the print start to Klippy;
- ``paused``: nothing loads (initial state unless ``load_on_startup``; also
  entered on a load error, a cancelled or failed print, and once a job is
  loaded when ``automatic_transition`` is off, its default).  Starting or
  clearing an empty queue changes nothing.

The queue and its state are saved in the database (namespace ``moonraker``,
keys ``job_queue.queued_jobs`` / ``job_queue.queue_state``) and survive
restarts.  With ``[file_manager] queue_gcode_uploads: True`` an upload with
``print=true`` is queued (and started when the printer is idle).
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import gevent

from ..api import ApiError

log = logging.getLogger(__name__)


META_NS = "moonraker"
QUEUE_KEY = "job_queue.queued_jobs"
STATE_KEY = "job_queue.queue_state"
READY, LOADING, STARTING, PAUSED = "ready", "loading", "starting", "paused"


class JobQueue:
    """The job queue component.

    Args:
        server: the :class:`moonflask.app.Server`.
        config: the ``[job_queue]`` section or None (defaults).
    """

    def __init__(self, server: Any, config: Any) -> None:
        self.server = server
        get = (lambda meth, key, default, **kw: getattr(config, meth)(key, default, **kw)) \
            if config is not None else (lambda meth, key, default, **kw: default)
        self.load_on_startup: bool = get("getboolean", "load_on_startup", False)
        self.automatic_transition: bool = get("getboolean", "automatic_transition", False)
        self.transition_delay: float = get("getfloat", "job_transition_delay", 0.01, minval=0.0)
        self.transition_gcode: str = (get("get", "job_transition_gcode", "") or "").strip()
        self.db = getattr(server, "database", None)
        self.meta = self.db.namespace(META_NS) if self.db is not None else None
        self.jobs: list[dict[str, Any]] = []
        if self.meta is not None:
            saved = self.meta.get(QUEUE_KEY, None) or []
            self.jobs = [dict(j) for j in saved if isinstance(j, dict) and "filename" in j]
        self.state = READY if self.load_on_startup else PAUSED
        self._loader: gevent.Greenlet | None = None
        self._startup_load_done = False
        # job_state events arrive in Klippy's reader greenlet: database
        # writes happen in a greenlet of their own
        ev = server.events
        ev.on("job_state:complete", lambda *a: gevent.spawn(self._on_complete, *a))
        ev.on("job_state:cancelled", lambda *a: gevent.spawn(self._on_failed, *a))
        ev.on("job_state:error", lambda *a: gevent.spawn(self._on_failed, *a))
        ev.on("klippy:ready", lambda: gevent.spawn(self._on_klippy_ready))
        self._hook_uploads()

    # -- helpers ----------------------------------------------------------
    def _hook_uploads(self) -> None:
        fm = self.server.components.get("file_manager")
        if fm is not None and getattr(fm, "queue_gcode_uploads", False):
            fm.set_upload_print_handler(self.queue_upload)

    def _save(self) -> None:
        if self.meta is not None:
            self.meta.insert(QUEUE_KEY, [dict(j) for j in self.jobs])

    def _gcode_path(self, filename: str) -> str:
        return os.path.join(self.server.data_path, "gcodes", filename)

    def queue_list(self) -> list[dict[str, Any]]:
        """The queued jobs with their ``time_in_queue`` (seconds)."""
        now = time.time()
        return [{"filename": j["filename"], "job_id": j["job_id"], "time_added": j["time_added"],
                 "time_in_queue": now - j["time_added"]} for j in self.jobs]

    def status(self) -> dict[str, Any]:
        """``{"queued_jobs": [...], "queue_state": str}``."""
        return {"queued_jobs": self.queue_list(), "queue_state": self.state}

    def _notify(self, action: str, queue_changed: bool) -> None:
        self.server.events.notify("notify_job_queue_changed", [{
            "action": action,
            "updated_queue": self.queue_list() if queue_changed else None,
            "queue_state": self.state}])

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.meta is not None:
                self.meta.insert(STATE_KEY, state)
            self._notify("state_changed", False)

    def _new_id(self) -> str:
        taken = {j["job_id"] for j in self.jobs}
        while True:
            job_id = f"{random.getrandbits(48):016X}"
            if job_id not in taken:
                return job_id

    def _printer_idle(self) -> bool:
        klippy = self.server.klippy
        if klippy.state != "ready":
            return False
        js = self.server.components.get("job_state")
        state = js.stats.get("state") if js is not None else \
            klippy.status.get("print_stats", {}).get("state", "standby")
        return state not in ("printing", "paused")

    # -- queue operations -------------------------------------------------
    def add_jobs(self, filenames: list[str], reset: bool = False) -> dict[str, Any]:
        """Append ``filenames`` (all must exist, else ApiError 400 and
        nothing is queued); ``reset`` clears the queue first."""
        names = []
        for name in filenames:
            name = str(name).strip().lstrip("/")
            if name.startswith("gcodes/"):
                name = name[len("gcodes/"):]
            norm = os.path.normpath(name) if name else ""
            # inside the root by name (a symlink the owner placed there is
            # followed, as for prints); "..", absolute paths and NULs are not
            if (not name or "\0" in name or os.path.isabs(norm) or norm == ".."
                    or norm.startswith(".." + os.sep)
                    or not os.path.isfile(self._gcode_path(norm))):
                raise ApiError(f"G-Code File {name} does not exist", 400)
            name = norm
            names.append(name)
        if reset:
            self.jobs = []
        now = time.time()
        for name in names:
            self.jobs.append({"filename": name, "job_id": self._new_id(), "time_added": now})
        self._save()
        if names or reset:
            self._notify("jobs_added", True)
        return self.status()

    def remove_jobs(self, job_ids: list[str] | None, all_jobs: bool) -> dict[str, Any]:
        """Remove the given ids (unknown ids are ignored) or every job; an
        empty queue stays as it is, without notification (as the reference)."""
        if not self.jobs:
            return self.status()
        if all_jobs:
            self.jobs = []
        else:
            wanted = {str(j).strip() for j in job_ids or []}
            self.jobs = [j for j in self.jobs if j["job_id"] not in wanted]
        self._save()
        self._notify("jobs_removed", True)
        return self.status()

    def jump(self, job_id: str) -> dict[str, Any]:
        """Move ``job_id`` to the front; ApiError 400 when unknown."""
        for i, job in enumerate(self.jobs):
            if job["job_id"] == job_id:
                self.jobs.insert(0, self.jobs.pop(i))
                self._save()
                return self.status()
        raise ApiError(f"Invalid job id: {job_id}", 400)

    def pause(self) -> dict[str, Any]:
        """Pause the queue (aborts a load in progress)."""
        loader, self._loader = self._loader, None
        if loader is not None and self.state == LOADING:
            loader.kill(block=False)
        self._set_state(PAUSED)
        return self.status()

    def start(self) -> dict[str, Any]:
        """Start the queue: load the next job now when the printer is idle,
        else become ``ready`` for the next transition.  An empty queue is
        left as it is (a paused one stays ``paused``), without notification,
        as the reference does (tests/reference/queue_start_empty_paused.json).

        Returns: :meth:`status`."""
        if self.state in (LOADING, STARTING) or not self.jobs:
            return self.status()
        if self.jobs and self._printer_idle():
            self._begin_load()
        else:
            self._set_state(READY)
        return self.status()

    def queue_upload(self, filename: str) -> tuple[bool, bool]:
        """The file manager's handler for an upload with ``print=true``
        (``queue_gcode_uploads``): queue it, start it when possible.

        Returns: ``(print_started, print_queued)``.
        """
        self.add_jobs([filename])
        if self.state in (READY, PAUSED) and self._printer_idle() and len(self.jobs) == 1:
            self._begin_load()
            return True, False
        return False, True

    # -- transitions ------------------------------------------------------
    def _begin_load(self) -> None:
        self._set_state(LOADING)
        self._loader = gevent.spawn(self._load_next)

    def _load_next(self) -> None:
        try:
            if self.transition_delay:
                gevent.sleep(self.transition_delay)
            if self.transition_gcode:
                self.server.klippy.request("gcode/script", {"script": self.transition_gcode})
            if self.state != LOADING:
                return
            if not self.jobs:
                self._set_state(READY)
                return
            self._set_state(STARTING)
            job = self.jobs.pop(0)
            self._save()
            try:
                self.server.jsonrpc.call("printer.print.start", {"filename": job["filename"]})
            except Exception:
                self.jobs.insert(0, job)
                self._save()
                raise
            # without automatic_transition the queue pauses once a job is
            # loaded (spec: configuration.md [job_queue]; as the reference)
            self.state = READY if self.automatic_transition else PAUSED
            if self.meta is not None:
                self.meta.insert(STATE_KEY, self.state)
            self._notify("job_loaded", True)
        except ApiError as err:
            log.warning("job queue: loading the next job failed: %s", err.message)
            self._set_state(PAUSED)
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("job queue: loading the next job failed")
            self._set_state(PAUSED)
        finally:
            if self._loader is gevent.getcurrent():
                self._loader = None

    def _on_complete(self, _prev: dict, _new: dict) -> None:
        if self.state != READY:
            return
        if not self.automatic_transition:
            if self.jobs:
                self._set_state(PAUSED)
            return
        if self.jobs:
            self._begin_load()

    def _on_failed(self, _prev: dict, _new: dict) -> None:
        if self.state == READY and self.jobs:
            self._set_state(PAUSED)

    def _on_klippy_ready(self) -> None:
        if self._startup_load_done:
            return
        self._startup_load_done = True
        if self.load_on_startup and self.state == READY and self.jobs and self._printer_idle():
            self._begin_load()


def load_component(server: Any, config: Any) -> JobQueue:
    """Create the job queue (always loaded; ``[job_queue]`` options)."""
    if config is None and server.config.has_section("job_queue"):
        config = server.config.section("job_queue")
    return JobQueue(server, config)
