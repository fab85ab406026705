"""Spoolman filament tracking (``[spoolman]``).  Spec: configuration.md
"[spoolman]", web_api.md "Spoolman APIs", "Appendix / Websocket
notifications / Spoolman active spool ID changed, Spoolman Status Changed".

Options: ``server`` (the Spoolman URL, required), ``sync_rate`` (seconds
between usage reports, default 5).

What it does:
- keeps a websocket to Spoolman's ``/api/v1/spool`` open (worker
  ``spoolman``, :func:`moonflask.workers.spoolman.run`); ``spoolman_connected``
  is True while it is up, each change is sent as
  ``notify_spoolman_status_changed``.  A ``deleted`` event for the active
  spool clears it.
- the active spool id lives in the database namespace ``moonraker`` key
  ``spoolman.spool_id`` (where Moonraker keeps it), restored at start;
  every change is sent as ``notify_active_spool_set``.
- filament usage: the growth of Klippy's ``toolhead.position[3]`` (the
  extruder position, mm of filament; retractions count negative) while a
  spool is active is added to that spool's pending usage and booked with
  ``PUT /api/v1/spool/{id}/use {"use_length": mm}`` every ``sync_rate``
  seconds and right after a job ends (worker ``spoolman_sync``,
  :func:`moonflask.workers.spoolman.run_sync`).

Durability (nothing lost, nothing counted twice):
- pending usage is mirrored in ``moonraker`` key ``spoolman.usage``
  (``{"pending": {"<spool id>": mm}, "inflight": {...}}``) at every sync
  tick and at shutdown, so a restart or a Spoolman outage loses nothing.
  A hard kill loses at most the usage of the last ``sync_rate`` seconds
  (never counts it twice).  Usage while moonflask is not running is not
  seen (the extruder position is re-read as a new baseline).
- a report is a two-step commit around the non-idempotent PUT.  Before
  the PUT, one database write moves the amount from ``pending`` to
  ``inflight`` = ``{"spool_id", "use_length", "used_before"}``
  where ``used_before`` is the spool's ``used_length`` read from Spoolman
  just before.  After a 2xx answer the in-flight record is deleted.  If
  moonflask dies, or the connection breaks, between the PUT and that
  deletion, the record is reconciled on the next connection: the spool is
  read again; ``used_length >= used_before + use_length`` means Spoolman
  booked it (the record is dropped), otherwise it goes back to pending and
  is sent again.  Only one report is in flight at a time.  Known limit:
  another client booking usage on the same spool inside that window makes
  a lost report look booked.
- Spoolman refusing a report (4xx/5xx answer): 404 (the spool was deleted)
  drops that usage with a log line; any other error status puts it back to
  pending and it is retried at the next tick.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import gevent
import gevent.event
import gevent.lock
import requests

from ..api import ApiError
from ..config import ConfigError

log = logging.getLogger(__name__)

DB_NS = "moonraker"
SPOOL_KEY = "spoolman.spool_id"
USAGE_KEY = "spoolman.usage"    # {"pending": {"<spool id>": mm}, "inflight": {...}}
REQUEST_TIMEOUT = 10.0      # seconds for one REST request to Spoolman
MIN_REPORT = 1e-4           # mm; smaller pending amounts are not sent
PROXY_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
UNAVAILABLE = "Spoolman server not available"
PROXY_PATH = re.compile(r"^/v\d+(/|$)")
HISTORY_FIELD = {"provider": "spoolman", "name": "spool_ids",
                 "description": "Spool IDs used", "units": None}


class SpoolmanUnavailable(Exception):
    """Spoolman could not be reached (connection refused, timeout)."""


def _header_name(name: str) -> str:
    """``x-total-count`` -> ``X-Total-Count`` (as the reference reports them)."""
    return "-".join(p.capitalize() for p in name.split("-"))


class Spoolman:
    """The ``spoolman`` component.

    Args:
        server: the :class:`moonflask.app.Server` (needs the ``database``
            component).
        config: the ``[spoolman]`` section.
    Raises:
        ConfigError: ``server`` missing, or ``sync_rate`` below 1.
    """

    def __init__(self, server: Any, config: Any) -> None:
        self.server = server
        server_url = config.get("server", None)   # both read before raising: no
        self.sync_rate = config.getint("sync_rate", 5, minval=1)  # "invalid option" noise
        if server_url is None:
            raise ConfigError("No option 'server' in section [spoolman]")
        self.base_url = server_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"Invalid server url: {self.base_url}")
        self.ws_url = "ws" + self.base_url[4:] + "/api/v1/spool"
        self.db = server.lookup_component("database").namespace(DB_NS)
        spool_id = self.db.get(SPOOL_KEY, None)
        self.spool_id: int | None = spool_id if isinstance(spool_id, int) else None
        usage = self.db.get(USAGE_KEY, None) or {}
        self.pending: dict[int, float] = {
            int(k): float(v) for k, v in (usage.get("pending") or {}).items()}
        self.inflight: dict[str, Any] | None = usage.get("inflight")
        self.connected = False
        self.session = requests.Session()
        self.wake = gevent.event.Event()    # the sync worker runs now when set
        self.check_needed = True            # the sync worker verifies state after a connect
        self._dirty = False
        self._last_e: float | None = None
        self._job_spools: list[int] | None = None
        self._workers: list[Any] = []
        ev = server.events
        ev.on("server:started", self._start)
        ev.on("server:shutdown", self._shutdown)
        ev.on("klippy:status_update", self._on_status)
        # Klippy's position restarts at 0 with Klippy: a new baseline comes
        # with the subscription snapshot after the reconnect.
        ev.on("klippy:disconnected", self._reset_position)
        ev.on("job_state:started", self._on_job_started)
        for name in ("complete", "cancelled", "error", "standby"):
            ev.on(f"job_state:{name}", self._on_job_end)
        server.klippy.add_internal_subscription("spoolman", {"toolhead"})
        server.klippy.register_remote_method("spoolman_set_active_spool",
                                             self._remote_set_active_spool)

    # -- lifetime ---------------------------------------------------------
    def _start(self) -> None:
        from ..workers import spoolman as worker
        self._workers = [self.server.workers.start("spoolman", worker.run, self),
                         self.server.workers.start("spoolman_sync", worker.run_sync, self)]

    def _shutdown(self) -> None:
        for w in self._workers:
            w.stop()
        self._workers = []
        self.persist_pending()

    # -- state ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """web_api.md "Get Spoolman Status": ``{"spoolman_connected": bool,
        "pending_reports": [{"spool_id", "filament_used"}], "spool_id"}``
        (``filament_used`` in mm; an in-flight report is listed too)."""
        totals = dict(self.pending)
        if self.inflight:
            sid = self.inflight["spool_id"]
            totals[sid] = totals.get(sid, 0.0) + self.inflight["use_length"]
        reports = [{"spool_id": sid, "filament_used": used}
                   for sid, used in totals.items() if abs(used) >= MIN_REPORT]
        return {"spoolman_connected": self.connected, "pending_reports": reports,
                "spool_id": self.spool_id}

    def set_active_spool(self, spool_id: int | None) -> int | None:
        """Make ``spool_id`` the spool usage is booked to (None: stop
        reporting); stored in the database and announced with
        ``notify_active_spool_set``.  Like the reference it is not checked
        against Spoolman here (an unknown id is cleared at the next
        (re)connect).  Returns the active id."""
        if spool_id is not None and (isinstance(spool_id, bool) or not isinstance(spool_id, int)):
            raise ApiError(f"Invalid spool_id: {spool_id!r}", 400)
        if spool_id == self.spool_id:
            return spool_id
        log.info("Setting active spool to: %s", spool_id)
        self.spool_id = spool_id
        self.db.insert(SPOOL_KEY, spool_id)
        if spool_id is not None and self._job_spools is not None:
            self._record_job_spool(spool_id)
        self.server.events.notify("notify_active_spool_set", [{"spool_id": spool_id}])
        return spool_id

    def _remote_set_active_spool(self, spool_id: Any = None, **_kw: Any) -> None:
        """Klippy remote method ``spoolman_set_active_spool`` (configuration.md
        "Setting the active spool from Klipper")."""
        try:
            self.set_active_spool(None if spool_id is None else int(spool_id))
        except (ApiError, ValueError, TypeError) as err:
            log.warning("spoolman_set_active_spool: invalid spool_id %r: %s", spool_id, err)

    def set_connected(self, connected: bool) -> None:
        """Record the websocket state; sends ``notify_spoolman_status_changed``
        on a change.  A new connection makes the sync worker verify the
        active spool and any in-flight report."""
        if connected == self.connected:
            return
        self.connected = connected
        log.info("Spoolman %s", "connected" if connected else "disconnected")
        if connected:
            self.check_needed = True
            self.wake.set()
        self.server.events.notify("notify_spoolman_status_changed",
                                  [{"spoolman_connected": connected}])

    def on_spool_event(self, event: dict[str, Any]) -> None:
        """A message of Spoolman's spool websocket: a ``deleted`` event for
        the active spool clears it."""
        payload = event.get("payload")
        if event.get("type") == "deleted" and isinstance(payload, dict):
            if self.spool_id is not None and payload.get("id") == self.spool_id:
                log.info("Active spool %s deleted in Spoolman", self.spool_id)
                self.set_active_spool(None)

    # -- usage tracking ---------------------------------------------------
    def _reset_position(self) -> None:
        self._last_e = None

    def _on_status(self, status: dict, _eventtime: float) -> None:
        pos = status.get("toolhead", {}).get("position")
        if not pos or len(pos) < 4:
            return
        e_pos = float(pos[3])
        last, self._last_e = self._last_e, e_pos
        if last is None or self.spool_id is None or e_pos == last:
            return
        sid = self.spool_id
        self.pending[sid] = self.pending.get(sid, 0.0) + (e_pos - last)
        self._dirty = True

    def _on_job_started(self, *_args: Any) -> None:
        self._job_spools = []
        if self.spool_id is not None:
            self._record_job_spool(self.spool_id)

    def _on_job_end(self, *_args: Any) -> None:
        self._job_spools = None
        self.wake.set()

    def _record_job_spool(self, spool_id: int) -> None:
        """Add ``spool_id`` to the running job's ``auxiliary_data``
        ``spool_ids`` (history component hook; history applies it in order
        with the job events it received before)."""
        assert self._job_spools is not None
        if spool_id in self._job_spools:
            return
        self._job_spools.append(spool_id)
        history = self.server.lookup_component("history", None)
        if history is not None:
            history.set_auxiliary_field(dict(HISTORY_FIELD, value=list(self._job_spools)))

    def persist_pending(self) -> None:
        """Mirror the pending usage in the database if it changed."""
        if self._dirty:
            self._write_usage()

    # -- reporting (called by the sync worker only) -----------------------
    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            return self.session.request(method, self.base_url + path,
                                        timeout=REQUEST_TIMEOUT, **kw)
        except requests.RequestException as err:
            raise SpoolmanUnavailable(str(err)) from None

    def _get_spool(self, spool_id: int) -> dict[str, Any] | None:
        """The spool from Spoolman, None when it does not exist.
        Raises SpoolmanUnavailable."""
        resp = self._request("GET", f"/api/v1/spool/{spool_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise SpoolmanUnavailable(f"GET spool {spool_id}: HTTP {resp.status_code}")
        try:
            spool = resp.json()
        except ValueError:
            spool = None
        if not isinstance(spool, dict):
            raise SpoolmanUnavailable(f"GET spool {spool_id}: not a spool: {resp.text[:100]!r}")
        return spool

    def verify(self) -> None:
        """After a (re)connect: settle an in-flight report and clear an
        active spool Spoolman does not know.  Raises SpoolmanUnavailable."""
        if self.inflight:
            self._reconcile_inflight()
        if self.spool_id is not None and self._get_spool(self.spool_id) is None:
            log.info("Active spool %s not found in Spoolman", self.spool_id)
            self.set_active_spool(None)
        self.check_needed = False

    def _reconcile_inflight(self) -> None:
        rec = self.inflight
        assert rec is not None
        spool = self._get_spool(rec["spool_id"])
        if spool is None:
            log.warning("Spoolman: spool %s is gone; dropping %.3f mm of usage",
                        rec["spool_id"], rec["use_length"])
        elif float(spool.get("used_length") or 0.0) >= (
                rec["used_before"] + rec["use_length"] - 1e-6):
            log.info("Spoolman: in-flight report of %.3f mm to spool %s was booked",
                     rec["use_length"], rec["spool_id"])
        else:
            log.info("Spoolman: in-flight report of %.3f mm to spool %s was not booked;"
                     " sending it again", rec["use_length"], rec["spool_id"])
            self.pending[rec["spool_id"]] = (self.pending.get(rec["spool_id"], 0.0)
                                             + rec["use_length"])
        self._commit_inflight(None)

    def _commit_inflight(self, record: dict[str, Any] | None) -> None:
        self.inflight = record
        self._write_usage()

    def _write_usage(self) -> None:
        """One database write of pending + in-flight (atomic: a crash
        leaves the old or the new pair)."""
        self._dirty = False
        usage: dict[str, Any] = {"pending": {str(k): v for k, v in self.pending.items()
                                             if abs(v) >= MIN_REPORT}}
        if self.inflight is not None:
            usage["inflight"] = self.inflight
        self.db.insert(USAGE_KEY, usage)

    def report_usage(self) -> None:
        """Book every pending amount with ``PUT /api/v1/spool/{id}/use``
        (the two-step commit in the module docstring).  Raises
        SpoolmanUnavailable; what was not booked stays pending."""
        for sid in list(self.pending):
            amount = self.pending.get(sid, 0.0)
            if abs(amount) < MIN_REPORT:
                continue
            spool = self._get_spool(sid)
            amount = self.pending.pop(sid, 0.0)
            if spool is None:
                log.warning("Spoolman: spool %s not found; dropping %.3f mm of usage",
                            sid, amount)
                self._commit_inflight(None)
                continue
            self._commit_inflight({"spool_id": sid, "use_length": amount,
                                   "used_before": float(spool.get("used_length") or 0.0)})
            try:
                resp = self._request("PUT", f"/api/v1/spool/{sid}/use",
                                     json={"use_length": amount})
            except SpoolmanUnavailable:
                self.check_needed = True    # outcome unknown: reconcile later
                raise
            if resp.status_code == 404:
                log.warning("Spoolman: spool %s deleted; dropping %.3f mm of usage",
                            sid, amount)
            elif resp.status_code >= 400:
                log.warning("Spoolman refused usage report for spool %s: HTTP %s %s",
                            sid, resp.status_code, resp.text[:200])
                self.pending[sid] = self.pending.get(sid, 0.0) + amount
            self._commit_inflight(None)

    def sync(self) -> None:
        """One tick of the sync worker: persist, verify after a connect,
        report.  Only while connected."""
        self.persist_pending()
        if not self.connected:
            return
        try:
            if self.check_needed:
                self.verify()
            self.report_usage()
        except SpoolmanUnavailable as err:
            log.info("Spoolman request failed: %s", err)

    # -- proxy ------------------------------------------------------------
    def proxy(self, method: str, path: str, query: str | None, body: Any,
              use_v2: bool) -> Any:
        """web_api.md "Proxy": forward a request to ``SERVER/api`` + ``path``.

        Args:
            method: the HTTP verb, upper case (GET, POST, PUT, PATCH, DELETE).
            path: must start with ``/v`` and the API version (``/v1/spool``).
            query: the query string without ``?``, or None.
            body: the JSON body, or None.
            use_v2: wrap the answer as ``{"response", "response_headers",
                "error": null}``, or on a Spoolman error
                ``{"response": null, "error": {"status_code", "message"}}``.
        Returns: Spoolman's JSON answer (v1) or the v2 wrapper.
        Raises:
            ApiError 400 for a bad method or path; v1: Spoolman's error
            status with its reason phrase, 503 when Spoolman is unreachable
            (v2: both as the wrapper's ``error``).
        """
        if method not in PROXY_METHODS:
            raise ApiError(f"Invalid HTTP method: {method}", 400)
        if not PROXY_PATH.match(path):
            raise ApiError("Invalid path, must start with the API version, e.g. /v1", 400)
        url = "/api" + path + (f"?{query}" if query else "")
        kw: dict[str, Any] = {} if body is None else {"json": body}
        try:
            resp = self._request(method, url, **kw)
        except SpoolmanUnavailable:
            if use_v2:
                return {"response": None, "error": {"status_code": 503,
                                                    "message": UNAVAILABLE}}
            raise ApiError(UNAVAILABLE, 503) from None
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = resp.text
        if resp.status_code >= 400:
            if not use_v2:
                raise ApiError(resp.reason or f"HTTP {resp.status_code}", resp.status_code)
            message = data.get("message") if isinstance(data, dict) else None
            if not isinstance(message, str):
                message = f"HTTP {resp.status_code}: {resp.reason}"
            return {"response": None,
                    "error": {"status_code": resp.status_code, "message": message}}
        if not use_v2:
            return data
        headers = {_header_name(k): v for k, v in resp.headers.items()}
        return {"response": data, "response_headers": headers, "error": None}


def load_component(server: Any, config: Any) -> Spoolman:
    """Build the ``spoolman`` component from ``[spoolman]``.  Raises ConfigError."""
    return Spoolman(server, config)


