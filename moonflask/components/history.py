"""Print history (``[history]``).  Spec: web_api.md "History APIs",
"Appendix / Websocket notifications / History Changed".

Every print Klippy starts becomes a job record in the database namespace
``history`` (key: the job id, six hex digits ``"000001"``)::

    {"job_id", "user", "filename", "status", "start_time", "end_time",
     "print_duration", "total_duration", "filament_used", "metadata",
     "auxiliary_data", "exists"}

``status`` is ``in_progress`` while printing, then ``completed``,
``cancelled``, ``error``, ``klippy_shutdown``, ``klippy_disconnected`` or
``interrupted`` (found unfinished and not resumable at start-up).
Totals live in namespace ``moonraker`` key ``history.job_totals``; the
auxiliary totals (web_api.md "Get job totals": ``auxiliary_totals``) in
``history.auxiliary_totals``, a list of ``{"provider", "field", "maximum",
"total"}`` (the shape :mod:`moonflask.components.database.migration` reads
from and writes to Moonraker's ``job_totals`` table).  When a job ends, every
provider of ``history:auxiliary_reports`` (sensor ``history_field_*`` with
``report_maximum``/``report_total``) names its fields: the job's value of the
field raises ``maximum`` / is added to ``total``; a report flag that is off
leaves its column ``null``.  Entries appear at the first job that ends with the
field configured, stay when the field is removed from the config, and
``reset_totals`` zeroes the non-null columns (as the reference 0.11.0,
tests/reference/sensor_totals_*.json).

Restarts: the job in progress is saved every few seconds and when
moonflask stops; after a restart it is resumed (same job id, no second
``added``) when Klippy still prints the same file, finished with Klippy's
final state when the print ended meanwhile, else marked ``interrupted``.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import gevent
import gevent.queue

from ..api import ApiError

log = logging.getLogger(__name__)


JOBS_NS = "history"
META_NS = "moonraker"
TOTALS_KEY = "history.job_totals"
AUX_TOTALS_KEY = "history.auxiliary_totals"
CURRENT_KEY = "history.current_job"
SAVE_INTERVAL = 5.0     # seconds between saves of the job in progress
METADATA_WAIT = 5.0     # seconds a new job waits for the file's metadata
ACTIVE = ("printing", "paused")
FINISH_STATUS = {"complete": "completed", "cancelled": "cancelled", "error": "error",
                 "standby": "cancelled"}
TOTAL_FIELDS = ("total_jobs", "total_time", "total_print_time", "total_filament_used",
                "longest_job", "longest_print")
TRUSTED_USER = "_TRUSTED_USER_"


def empty_totals() -> dict[str, float]:
    """Job totals with every field zero."""
    return {"total_jobs": 0, "total_time": 0.0, "total_print_time": 0.0,
            "total_filament_used": 0.0, "longest_job": 0.0, "longest_print": 0.0}


def _user_name(user: Any) -> str | None:
    if user is None:
        return TRUSTED_USER
    if isinstance(user, dict):
        return user.get("username", TRUSTED_USER)
    return str(user)


class History:
    """The job history component.

    Args:
        server: the :class:`moonflask.app.Server`; needs the database
            (``server.database``) and job_state components.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.db = server.database
        self.jobs = self.db.namespace(JOBS_NS, protected=True)
        self.meta = self.db.namespace(META_NS)
        self.totals: dict[str, Any] = dict(empty_totals())
        self.totals.update(self.meta.get(TOTALS_KEY, None) or {})
        aux = self.meta.get(AUX_TOTALS_KEY, None)
        self.aux_totals: list[dict[str, Any]] = [
            dict(a) for a in (aux if isinstance(aux, list) else [])
            if isinstance(a, dict) and a.get("provider") and a.get("field")]
        keys = [k for k in self.jobs.keys() if _is_job_id(k)]
        self.next_id = max((int(k, 16) for k in keys), default=0) + 1
        # jobs imported from a Moonraker database carry no "exists" (Moonraker
        # computes it when listing): add it once, kept current from then on
        imported = {k: dict(j, exists=self._file_exists(str(j.get("filename") or "")))
                    for k, j in self.jobs.items()
                    if _is_job_id(k) and isinstance(j, dict) and "exists" not in j}
        if imported:
            self.jobs.insert_batch(imported)
        self.current: dict[str, Any] | None = None
        self._last_save = 0.0
        self._pending_user: tuple[str, Any] | None = None
        # Events arrive in Klippy's reader greenlet: database writes and
        # metadata lookups must not hold it up, so every change is queued
        # to one worker greenlet and applied there, in order.
        self._tasks: gevent.queue.Queue = gevent.queue.Queue()
        from ..workers import task_queue
        self._worker = server.workers.start("history", task_queue.run, self._tasks, "history")

        def queued(fn: Any) -> Any:
            return task_queue.enqueuer(self._tasks, fn)
        ev = server.events
        ev.on("printer:print_start_requested", self._on_print_requested)
        ev.on("job_state:init", queued(self._on_init))
        ev.on("job_state:started", queued(self._on_started))
        ev.on("job_state:paused", queued(lambda prev, new: self._save_current(new, force=True)))
        ev.on("job_state:complete", queued(self._on_finished))
        ev.on("job_state:cancelled", queued(self._on_finished))
        ev.on("job_state:error", queued(self._on_finished))
        ev.on("job_state:standby", queued(self._on_finished))
        ev.on("klippy:status_update", self._on_status)
        ev.on("klippy:shutdown", queued(lambda: self._finish_current("klippy_shutdown")))
        ev.on("klippy:disconnected",
              queued(lambda: self._finish_current("klippy_disconnected")))
        ev.on("server:shutdown", self._on_server_shutdown)
        ev.on("file_manager:filelist_changed", queued(self._on_filelist_changed))

    # -- job lifecycle ----------------------------------------------------
    def _on_print_requested(self, filename: str, user: Any = None) -> None:
        self._pending_user = (filename, user)

    def _on_init(self, stats: dict[str, Any]) -> None:
        """Klippy (re)identified: resume or close a job left in progress."""
        cur_id = self.meta.get(CURRENT_KEY, None)
        if self.current is None and cur_id:
            job = self.jobs.get(cur_id, None)
            if job is not None and job.get("status") == "in_progress":
                self.current = job
                # providers (sensor history fields) take their tracked state back
                self.server.events.emit("history:job_restored", dict(job))
        job = self.current
        if job is None:
            if cur_id:
                self.meta.pop(CURRENT_KEY, None)
            if stats.get("state") in ACTIVE and stats.get("filename"):
                self._start_job(stats)
            return
        same = (stats.get("filename") == job["filename"]
                and float(stats.get("total_duration") or 0.0) >= job["total_duration"] - 0.01)
        state = stats.get("state")
        if same and state in ACTIVE:
            log.info("Resuming history job %s (%s)", job["job_id"], job["filename"])
            self._update_stats(stats)
        elif same and state in ("complete", "cancelled", "error"):
            self._finish_current(FINISH_STATUS[state], stats)
        else:
            self._finish_current("interrupted")
            if state in ACTIVE and stats.get("filename"):
                self._start_job(stats)

    def _on_started(self, _prev: dict, new: dict) -> None:
        if self.current is not None:
            self._finish_current("interrupted")
        self._start_job(new)

    def _start_job(self, stats: dict[str, Any]) -> None:
        filename = stats.get("filename") or ""
        user: Any = None
        if self._pending_user is not None and self._pending_user[0] == filename:
            user = self._pending_user[1]
        self._pending_user = None
        job_id = f"{self.next_id:06X}"
        self.next_id += 1
        job = {
            "job_id": job_id, "user": _user_name(user), "filename": filename,
            "status": "in_progress", "start_time": time.time(), "end_time": None,
            "print_duration": 0.0, "total_duration": 0.0, "filament_used": 0.0,
            "metadata": self._metadata(filename), "auxiliary_data": [],
            "exists": self._file_exists(filename),
        }
        self.current = job
        self._apply_stats(stats)
        # providers (sensor history fields) append their entries
        self.server.events.emit("history:auxiliary_data", job["auxiliary_data"])
        self._store(job)
        self.meta.insert(CURRENT_KEY, job_id)
        self._mark_file(job)
        self._last_save = time.monotonic()
        self.server.events.notify("notify_history_changed", [{"action": "added", "job": dict(job)}])
        self.server.events.emit("history:job_added", dict(job))

    def _apply_stats(self, stats: dict[str, Any]) -> None:
        job = self.current
        if job is None:
            return
        for key in ("print_duration", "total_duration", "filament_used"):
            if key in stats and stats[key] is not None:
                job[key] = float(stats[key])

    def _update_stats(self, stats: dict[str, Any]) -> None:
        self._apply_stats(stats)
        self._save_current(None, force=True)

    def _on_status(self, _status: dict, _eventtime: float) -> None:
        js = self.server.components.get("job_state")
        if js is None or not js.known or js.stats.get("state") not in ACTIVE:
            return
        self._tasks.put((self._track, (dict(js.stats),)))

    def _track(self, stats: dict[str, Any]) -> None:
        if self.current is None or stats.get("filename") != self.current["filename"]:
            return
        self._apply_stats(stats)
        self._save_current(None)

    def _save_current(self, stats: dict | None, force: bool = False) -> None:
        if self.current is None:
            return
        if stats:
            self._apply_stats(stats)
        now = time.monotonic()
        if force or now - self._last_save >= SAVE_INTERVAL:
            self._last_save = now
            self._store(self.current)

    def _on_finished(self, prev: dict, new: dict) -> None:
        if self.current is None:
            return
        state = new.get("state")
        if state == "standby" and prev.get("state") not in ACTIVE:
            return
        # standby after printing: the print was reset (CANCEL_PRINT macro,
        # SDCARD_RESET_FILE): Klippy's counters are already zero, keep ours.
        self._finish_current(FINISH_STATUS.get(state, "cancelled"),
                             None if state == "standby" else new)

    def _finish_current(self, status: str, stats: dict | None = None) -> None:
        job = self.current
        if job is None:
            return
        if stats:
            self._apply_stats(stats)
        self.current = None
        job["status"] = status
        job["end_time"] = time.time()
        t = self.totals
        t["total_jobs"] += 1
        t["total_time"] += job["total_duration"]
        t["total_print_time"] += job["print_duration"]
        t["total_filament_used"] += job["filament_used"]
        t["longest_job"] = max(t["longest_job"], job["total_duration"])
        t["longest_print"] = max(t["longest_print"], job["print_duration"])
        self._refresh_auxiliary(job)
        self._add_auxiliary_totals(job)
        self._store(job)
        self.meta.insert(TOTALS_KEY, dict(t))
        self.meta.pop(CURRENT_KEY, None)
        log.info("History job %s finished: %s", job["job_id"], status)
        self.server.events.notify("notify_history_changed",
                                  [{"action": "finished", "job": dict(job)}])
        self.server.events.emit("history:job_finished", dict(job))

    def _on_server_shutdown(self) -> None:
        """Apply what is queued, then save the job in progress (it stays
        ``in_progress`` and is resumed after the restart)."""
        self._worker.stop()
        while not self._tasks.empty():
            fn, args = self._tasks.get()
            try:
                fn(*args)
            except Exception:
                log.exception("history: %s failed at shutdown", getattr(fn, "__name__", fn))
        if self.current is not None:
            self._refresh_auxiliary(self.current)
            self._store(self.current)

    def _refresh_auxiliary(self, job: dict[str, Any]) -> None:
        """At a job's end: the providers of ``history:auxiliary_data`` (sensor
        history fields) give their final entries, which replace theirs in
        place; entries set with :meth:`set_auxiliary_field` stay."""
        fresh: list[dict[str, Any]] = []
        self.server.events.emit("history:auxiliary_data", fresh)
        by_key = {(f.get("provider"), f.get("name")): f for f in fresh}
        out = []
        for entry in job["auxiliary_data"]:
            out.append(by_key.pop((entry.get("provider"), entry.get("name")), entry))
        job["auxiliary_data"] = out + list(by_key.values())

    def _add_auxiliary_totals(self, job: dict[str, Any]) -> None:
        """At a job's end: fold the job's values of the reported fields
        (``history:auxiliary_reports``) into :attr:`aux_totals` and save them."""
        reports: list[dict[str, Any]] = []
        self.server.events.emit("history:auxiliary_reports", reports)
        if not reports:
            return
        values = {(f.get("provider"), f.get("name")): f.get("value")
                  for f in job["auxiliary_data"]}
        index = {(a["provider"], a["field"]): a for a in self.aux_totals}
        for rep in reports:
            key = (rep["provider"], rep["field"])
            value = values.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            entry = index.get(key)
            if entry is None:
                entry = index[key] = {"provider": key[0], "field": key[1],
                                      "maximum": None, "total": None}
                self.aux_totals.append(entry)
            if rep.get("maximum"):
                prev = entry.get("maximum")
                entry["maximum"] = value if prev is None else max(prev, value)
            if rep.get("total"):
                prev = entry.get("total")
                entry["total"] = value if prev is None else prev + value
        self.meta.insert(AUX_TOTALS_KEY, [dict(a) for a in self.aux_totals])

    def auxiliary_totals(self) -> list[dict[str, Any]]:
        """web_api.md "Get job totals" ``auxiliary_totals``: a copy of
        ``[{"provider", "field", "maximum", "total"}]`` (``null``: not reported)."""
        return [dict(a) for a in self.aux_totals]

    def set_auxiliary_field(self, field: dict[str, Any]) -> None:
        """Set one entry of the current job's ``auxiliary_data`` (replacing the
        entry with the same ``provider`` and ``name``) and save the job;
        queued after the job events received so far, so it lands on the job
        those events started; no job running: nothing.  ``field``:
        ``{"provider", "name", "value", "description", "units"}``
        (spoolman's ``spool_ids``)."""
        def apply() -> None:
            job = self.current
            if job is None:
                return
            key = (field["provider"], field["name"])
            aux = [f for f in job["auxiliary_data"] if (f.get("provider"), f.get("name")) != key]
            job["auxiliary_data"] = aux + [dict(field)]
            self._store(job)
        self._tasks.put((apply, ()))

    # -- helpers ----------------------------------------------------------
    def _store(self, job: dict[str, Any]) -> None:
        self.jobs.insert(job["job_id"], dict(job))

    def _gcodes_path(self) -> str:
        return os.path.join(self.server.data_path, "gcodes")

    def _file_exists(self, filename: str) -> bool:
        return bool(filename) and os.path.isfile(os.path.join(self._gcodes_path(), filename))

    def _metadata(self, filename: str) -> dict[str, Any]:
        """The file's gcode metadata from the file manager (scanned when
        needed, at most METADATA_WAIT seconds: then size/modified now and
        the rest filled in by a background scan)."""
        fm = self.server.components.get("file_manager")
        full = os.path.join(self._gcodes_path(), filename)
        meta: Any = None
        if fm is not None and hasattr(fm, "get_metadata"):
            getter = gevent.spawn(fm.get_metadata, filename)
            getter.join(timeout=METADATA_WAIT)
            if getter.ready():
                meta = getter.value
            else:
                gevent.spawn(self._late_metadata, getter, filename)
        if isinstance(meta, dict) and meta:
            return dict(meta)
        try:
            st = os.stat(full)
        except OSError:
            return {}
        return {"size": st.st_size, "modified": st.st_mtime}

    def _late_metadata(self, getter: gevent.Greenlet, filename: str) -> None:
        getter.join()
        meta = getter.value
        if not isinstance(meta, dict):
            return
        for job in [self.current] if self.current is not None else []:
            if job["filename"] == filename:
                job["metadata"] = dict(meta)
                self._tasks.put((self._store, (job,)))

    def _mark_file(self, job: dict[str, Any]) -> None:
        """Record the job in the file's metadata (``job_id``,
        ``print_start_time``), as Moonraker does."""
        fm = self.server.components.get("file_manager")
        updater = getattr(fm, "update_metadata", None)
        if updater is None:
            return
        try:
            updater(job["filename"], {"job_id": job["job_id"],
                                      "print_start_time": job["start_time"]})
        except Exception as err:
            log.info("could not update metadata of %s: %s", job["filename"], err)

    def _on_filelist_changed(self, payload: dict[str, Any]) -> None:
        action = payload.get("action", "")
        item = payload.get("item") or {}
        if item.get("root", "gcodes") != "gcodes":
            return
        path = item.get("path", "")
        changes: list[tuple[str, bool, bool]] = []  # (path, is_dir, exists)
        if action in ("delete_file", "delete_dir"):
            changes.append((path, action == "delete_dir", False))
        elif action in ("create_file", "upload_file", "modify_file"):
            changes.append((path, False, True))
        elif action in ("move_file", "move_dir"):
            src = payload.get("source_item") or {}
            if src.get("root", "gcodes") == "gcodes":
                changes.append((src.get("path", ""), action == "move_dir", False))
            changes.append((path, action == "move_dir", True))
        elif action == "create_dir":
            changes.append((path, True, True))
        if not changes:
            return
        for key, job in list(self.jobs.items()):
            if not _is_job_id(key) or not isinstance(job, dict):
                continue
            name = job.get("filename", "")
            for cpath, is_dir, exists in changes:
                hit = (name.startswith(cpath.rstrip("/") + "/") if is_dir else name == cpath)
                if hit and job.get("exists") != exists:
                    if is_dir and exists:
                        exists = self._file_exists(name)
                    job["exists"] = exists
                    if self.current is not None and self.current["job_id"] == key:
                        self.current["exists"] = exists
                    self._store(job)

    # -- queries ----------------------------------------------------------
    def get_job(self, uid: str) -> dict[str, Any]:
        """The job ``uid``; raises ApiError 404 when unknown."""
        if self.current is not None and self.current["job_id"] == uid:
            return dict(self.current)
        job = self.jobs.get(uid, None) if _is_job_id(uid) else None
        if job is None:
            raise ApiError(f"Invalid job uid: {uid}", 404)
        return job

    def list_jobs(self, start: int, limit: int, since: float | None, before: float | None,
                  order: str) -> dict[str, Any]:
        """``{"count", "jobs"}`` filtered by start_time (exclusive bounds),
        ordered by job id (``desc`` newest first), paged by start/limit."""
        jobs = []
        for key, job in self.jobs.items():
            if not _is_job_id(key) or not isinstance(job, dict):
                continue
            if self.current is not None and key == self.current["job_id"]:
                job = dict(self.current)
            st = job.get("start_time") or 0.0
            if since is not None and st <= since:
                continue
            if before is not None and st >= before:
                continue
            jobs.append(job)
        jobs.sort(key=lambda j: int(j["job_id"], 16), reverse=(order == "desc"))
        page = jobs[start:start + limit] if limit > 0 else jobs[start:]
        return {"count": len(page), "jobs": page}

    def delete_jobs(self, uid: str | None, all_jobs: bool) -> list[str]:
        """Delete one job (or every job); returns the deleted ids."""
        if all_jobs:
            keys = [k for k in self.jobs.keys() if _is_job_id(k)]
            if self.current is not None:
                keys = [k for k in keys if k != self.current["job_id"]]
            for k in keys:
                self.jobs.pop(k, None)
            return sorted(keys)
        if uid is None:
            raise ApiError("No data for argument: uid", 400)
        if self.current is not None and self.current["job_id"] == uid:
            raise ApiError(f"Cannot delete job {uid}: it is in progress", 400)
        if not _is_job_id(uid) or self.jobs.get(uid, None) is None:
            raise ApiError(f"Invalid job uid: {uid}", 404)
        self.jobs.pop(uid, None)
        return [uid]

    def reset_totals(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Zero the totals (auxiliary totals: every non-null ``maximum`` /
        ``total`` becomes 0, the entries stay); returns the previous
        ``(job_totals, auxiliary_totals)``."""
        last = dict(self.totals)
        last_aux = self.auxiliary_totals()
        self.totals = dict(empty_totals())
        self.meta.insert(TOTALS_KEY, dict(self.totals))
        if self.aux_totals:
            for entry in self.aux_totals:
                for col in ("maximum", "total"):
                    if entry.get(col) is not None:
                        entry[col] = 0
            self.meta.insert(AUX_TOTALS_KEY, [dict(a) for a in self.aux_totals])
        return last, last_aux


def _is_job_id(key: Any) -> bool:
    if not isinstance(key, str) or not key:
        return False
    try:
        int(key, 16)
    except ValueError:
        return False
    return True


def load_component(server: Any, _config: Any) -> History:
    """Create the history component (``[history]``, optional: loaded by
    default as in Moonraker 0.11; the section has no options)."""
    server.config.section("history")
    return History(server)
