"""The ``update_manager`` component: update status, refresh, upgrade,
rollback and recovery of moonflask itself (``moonraker``), Klipper, system
packages and the extensions of ``[update_manager NAME]`` sections.

``[update_manager]`` options (configuration.md): ``enable_auto_refresh``,
``refresh_interval`` (hours, default 672), ``refresh_window`` (``H1-H2``,
default ``0-5``, may wrap midnight), ``enable_system_updates``,
``enable_packagekit``, ``channel`` (for moonraker and klipper).  Extension
types: ``git_repo``, ``web``, ``zip``, ``executable``, ``python``.

One update at a time (``busy``); none while Klippy prints.  Each update
request streams ``notify_update_response`` messages (the last with
``complete: true``); a refresh ends with ``notify_update_refreshed``.
Updates are journaled (journal.py) and an update interrupted by a crash is
completed or undone at the next start (:meth:`UpdateManager.resume_interrupted`).
Spec: update_manager.md, web_api.md "Update Manager APIs",
"Update Manager Response", "Update Manager Refreshed".
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
from gevent import subprocess

from ...api import ApiError
from ...config import ConfigError
from .base import BaseUpdater, Reporter, UpdateError
from .git_cmd import die_with_parent
from .git_deploy import GitRepo
from .journal import Journal

log = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
MIN_REFRESH_GAP = 60.0   # seconds: the deprecated status?refresh=true limit
REFRESH_CONCURRENCY = 6  # updaters refreshed at once: of 3, 6, 10, 6 refreshed 10 repos fastest on 2 cores
KLIPPER_REQUIREMENTS = "scripts/klippy-requirements.txt"


def parse_window(text: str) -> tuple[int, int]:
    """``"0-5"`` -> ``(0, 5)``; hours 0..23.  Raises ConfigError."""
    try:
        start, end = (int(p) for p in text.split("-"))
    except ValueError:
        raise ConfigError(f"[update_manager]: option 'refresh_window' must be "
                          f"'H1-H2', not '{text}'") from None
    if not (0 <= start <= 23 and 0 <= end <= 23):
        raise ConfigError("[update_manager]: 'refresh_window' hours must be 0..23")
    return start, end


class UpdateManager:
    """The update manager.

    Args:
        server: the Server.
        section: the ``[update_manager]`` ConfigSection.
    Raises:
        ConfigError: an invalid option or extension section.
    """

    def __init__(self, server: Any, section: Any) -> None:
        self.server = server
        self.enable_auto_refresh = section.getboolean("enable_auto_refresh", False)
        self.refresh_interval = section.getint("refresh_interval", 672, minval=1)
        self.refresh_window = parse_window(section.get("refresh_window", "0-5"))
        self.enable_system_updates = section.getboolean("enable_system_updates", True)
        self.enable_packagekit = section.getboolean("enable_packagekit", True)
        self.channel = (section.get("channel", "dev") or "dev").lower()
        self.journal = Journal(os.path.join(server.data_path, "update_manager"))
        self.github_limits: dict[str, Any] = {"github_rate_limit": None,
                                              "github_requests_remaining": None,
                                              "github_limit_reset_time": None}
        self.updaters: dict[str, BaseUpdater] = {}
        self._lock = gevent.lock.Semaphore()
        self.busy = False
        self.initialized = gevent.event.Event()
        self.last_refresh = 0.0
        self.recovery_notes: list[tuple[str, Any, str]] = []
        self._restart_pending = False
        self._build_updaters()
        server.events.on("server:started", self._start)
        server.events.on("klippy:identified", self._on_klippy_identified)

    # -- setup ----------------------------------------------------------------
    def _builtin_section(self, name: str) -> Any:
        sec = f"update_manager {name}"
        return self.server.config.section(sec) if self.server.config.has_section(sec) else None

    def _build_updaters(self) -> None:
        cfg = self.server.config
        if self.enable_system_updates:
            from .system_deploy import SystemUpdater
            self.updaters["system"] = SystemUpdater(self, self.enable_packagekit)
        venv = os.environ.get("VIRTUAL_ENV") or (
            os.path.dirname(os.path.dirname(sys.executable))
            if sys.prefix != sys.base_prefix else None)
        own = os.path.isdir(os.path.join(REPO_ROOT, ".git")) or \
            os.path.isfile(os.path.join(REPO_ROOT, ".git"))
        self.updaters["moonraker"] = GitRepo(
            self, "moonraker", self._builtin_section("moonraker"), REPO_ROOT,
            {"virtualenv": venv, "requirements": "requirements.txt",
             "managed_services": ["moonraker"],
             "not_git_reason": None if own else
             f"moonflask at {REPO_ROOT} is not a git checkout: updates are disabled"},
            default_channel=self.channel)
        self.updaters["klipper"] = GitRepo(
            self, "klipper", self._builtin_section("klipper"), None,
            {"managed_services": ["klipper"], "requirements": KLIPPER_REQUIREMENTS,
             "not_git_reason": "Klipper's path is not known yet (Klippy has not "
                               "identified)"},
            default_channel=self.channel)
        for sec_name in cfg.prefix_sections("update_manager "):
            name = sec_name.split(None, 1)[1].strip()
            if name in ("moonraker", "klipper"):
                continue
            if name in self.updaters:
                raise ConfigError(f"[{sec_name}]: duplicate updater name")
            self.updaters[name] = self._build_extension(name, cfg.section(sec_name))

    def _build_extension(self, name: str, sec: Any) -> BaseUpdater:
        kind = sec.get("type")
        if kind == "git_repo":
            path = sec.get("path")
            sec.get("origin")  # required
            return GitRepo(self, name, sec, path)
        if kind in ("web", "zip", "executable"):
            from .web_deploy import WebUpdater
            return WebUpdater(self, name, sec, kind)
        if kind == "python":
            from .python_deploy import PythonUpdater
            return PythonUpdater(self, name, sec)
        raise ConfigError(f"[update_manager {name}]: unsupported type '{kind}' "
                          "(git_repo, web, zip, executable or python)")

    def _on_klippy_identified(self) -> None:
        info = self.server.klippy.info or {}
        kpath = info.get("klipper_path")
        upd = self.updaters["klipper"]
        if not isinstance(upd, GitRepo) or not kpath or kpath == upd.path:
            return
        upd.path = kpath
        pypath = info.get("python_path")
        if pypath and upd.virtualenv is None:
            upd.virtualenv = os.path.dirname(os.path.dirname(pypath))
        upd.not_git_reason = (f"Klipper at {kpath} is not a git checkout (a pip install?): "
                              "updates are disabled")
        # also when the start-up refresh runs: it may have refreshed this
        # entry already (the updaters are refreshed concurrently)
        gevent.spawn(self._refresh_quietly, upd)

    def _refresh_quietly(self, upd: BaseUpdater) -> None:
        self.initialized.wait()  # after the start-up recovery and refresh
        with self._lock:
            upd.refresh()

    def _start(self) -> None:
        gevent.spawn(self._initialize)

    def _initialize(self) -> None:
        try:
            with self._lock:
                self.resume_interrupted()
                self._refresh_all()
        except Exception:
            log.exception("update manager initialisation failed")
        finally:
            self.initialized.set()
        if self.enable_auto_refresh:
            from ...workers.update_refresher import run
            self.server.workers.start("update_refresher", run, self)

    def resume_interrupted(self) -> None:
        """Complete or undo every update a crash interrupted (journal records
        found at start); say what was done in the log, a
        ``notify_update_response`` line and the updater's ``anomalies``."""
        for rec in self.journal.pending():
            upd = self.updaters.get(rec["name"])
            if upd is None:
                log.error("journal of unknown updater %s dropped", rec["name"])
                self.journal.finish(rec)
                continue
            log.warning("update manager: resuming interrupted %s of %s at step %s",
                        rec.get("op"), rec["name"], rec.get("step"))
            try:
                note = upd.resume(rec)
            except Exception as err:
                log.exception("resuming %s failed", rec["name"])
                note = f"Interrupted {rec.get('op')} of {rec['name']} could not be " \
                       f"resumed: {err}"
            log.warning("update manager: %s", note)
            self.journal.put(rec["name"], recovery_note=note)
            self.recovery_notes.append((rec["name"], rec.get("proc_id"), note))
        if self.recovery_notes:
            self.server.events.on("connection:identified", self._announce_recovery)
            self._announce_recovery()

    def _announce_recovery(self, _conn: Any = None) -> None:
        """Send what the start-up recovery did as ``notify_update_response``
        (at start, and once more to the first client that identifies: at
        start nobody is connected yet)."""
        for name, proc_id, note in self.recovery_notes:
            rep = Reporter(self.server, name)
            rep.proc_id = proc_id or rep.proc_id
            rep(note, complete=True)
        if _conn is not None:
            self.recovery_notes = []

    # -- helpers used by the updaters --------------------------------------------
    def run_streaming(self, cmd: list[str], rep: Any, timeout: float = 1800) -> None:
        """Run ``cmd``, reporting each output line.  Raises UpdateError on a
        non-zero exit."""
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        except OSError as err:
            raise UpdateError(f"{cmd[0]}: {err.strerror}") from None
        assert proc.stdout is not None
        with gevent.Timeout(timeout, UpdateError(f"{' '.join(cmd[:3])} timed out")):
            for raw in proc.stdout:
                rep(raw.decode("utf-8", "replace"))
            rc = proc.wait()
        if rc != 0:
            raise UpdateError(f"{' '.join(cmd[:4])} ... failed with exit code {rc}")

    def install_system_packages(self, name: str, pkgs: list[str], rep: Any) -> None:
        """Install the OS packages ``pkgs`` that updater ``name`` depends on."""
        system = self.updaters.get("system")
        if system is None:
            rep(f"System updates are disabled: not installing {' '.join(pkgs)} for {name}")
            return
        system.install_packages(pkgs, rep)  # type: ignore[attr-defined]

    def restart_self(self, rep: Any) -> None:
        """Restart moonflask once the current update request has answered
        (after an update of its own checkout)."""
        rep("Restarting moonflask...")
        self._restart_pending = True

    def _do_restart_self(self) -> None:
        self._restart_pending = False
        machine = self.server.lookup_component("machine", None)
        if machine is not None and machine.instance_ids["moonraker"] in \
                machine.provider.available:
            machine.service_action("restart", machine.instance_ids["moonraker"])
        else:
            self.server.restart()

    # -- state --------------------------------------------------------------------
    def is_printing(self) -> bool:
        """True while Klippy's ``print_stats.state`` is printing or paused."""
        klippy = self.server.klippy
        if klippy.state != "ready":
            return False
        try:
            res = klippy.request("objects/query", {"objects": {"print_stats": ["state"]}},
                                 timeout=5)
        except ApiError:
            return False
        state = res.get("status", {}).get("print_stats", {}).get("state")
        return state in ("printing", "paused")

    def status(self, refresh: bool = False) -> dict[str, Any]:
        """update_manager.md "Get update status"; ``refresh`` (deprecated)
        refreshes everything unless busy, printing, initialising or done
        within the last 60 s (then silently not)."""
        if refresh and self.initialized.is_set() and not self._lock.locked() \
                and time.monotonic() - self.last_refresh >= MIN_REFRESH_GAP \
                and not self.is_printing():
            with self._lock:
                self._refresh_all()
        return self._status()

    def _status(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.github_limits)
        out["version_info"] = {name: upd.status() for name, upd in self.updaters.items()}
        out["busy"] = self.busy
        return out

    def _refresh_all(self, names: list[str] | None = None) -> None:
        """Refresh the updaters ``names`` (all when None) concurrently, one
        greenlet each (at most REFRESH_CONCURRENCY at once): their git, pip
        and HTTP work waits on subprocesses and sockets, never on the hub."""
        def one(name: str, upd: BaseUpdater) -> None:
            try:
                upd.refresh()
            except Exception:  # one broken updater must not hide the others
                log.exception("refresh of %s failed", name)

        pool = gevent.pool.Pool(REFRESH_CONCURRENCY)
        with self.journal.deferred():
            for name, upd in self.updaters.items():
                if names is None or name in names:
                    pool.spawn(one, name, upd)
            pool.join()
        if names is None:
            self.last_refresh = time.monotonic()

    def _check_refresh_allowed(self) -> None:
        if not self.initialized.is_set():
            raise ApiError("Update Manager not initialized", 503)
        if self.busy or self._lock.locked() or self.is_printing():
            raise ApiError("Server is busy, cannot perform refresh", 503)

    def refresh(self, name: str | None = None) -> dict[str, Any]:
        """update_manager.md "Refresh update status": refresh ``name`` (all
        when None), broadcast ``notify_update_refreshed``, return the status.

        Raises: ApiError 400 for an unknown updater, 503 while updating,
        printing or initialising."""
        if name is not None and name not in self.updaters:
            raise ApiError(f"No updater registered for '{name}'", 400)
        self._check_refresh_allowed()
        with self._lock:
            self._refresh_all(None if name is None else [name])
        result = self._status()
        self.server.events.notify("notify_update_refreshed", [result])
        return result

    def auto_refresh(self, now: float) -> list[str]:
        """Refresh the updaters whose ``refresh_interval`` elapsed (the
        refresher worker, inside ``refresh_window``, never while printing).
        Returns the names refreshed."""
        if not self.initialized.is_set() or self._lock.locked() or self.is_printing():
            return []
        due = [n for n, u in self.updaters.items() if u.needs_refresh(now)]
        if not due:
            return []
        with self._lock:
            self._refresh_all(due)
        self.server.events.notify("notify_update_refreshed", [self._status()])
        return due

    # -- updates ------------------------------------------------------------------
    def _get(self, name: str) -> BaseUpdater:
        upd = self.updaters.get(name)
        if upd is None:
            raise ApiError(f"Updater {name} not available", 404)
        return upd

    def _run(self, first_app: str, work: Any) -> str:
        if not self.initialized.is_set():
            raise ApiError("Update Manager not initialized", 503)
        if self.is_printing():
            raise ApiError("Update Refused: Klippy is printing", 503)
        if not self._lock.acquire(blocking=False):
            raise ApiError("Update Refused: another update is in progress", 503)
        rep = Reporter(self.server, first_app)
        self.busy = True
        try:
            final = work(rep)
            rep(final, complete=True)
        except UpdateError as err:
            rep(f"Error: {err}", complete=True)
            raise ApiError(str(err), 500) from None
        except Exception as err:
            log.exception("update of %s failed", rep.application)
            rep(f"Error: {err}", complete=True)
            raise ApiError(f"Update of {rep.application} failed: {err}", 500) from None
        finally:
            self.busy = False
            self._lock.release()
            if self._restart_pending:
                self._do_restart_self()
        return "ok"

    def _upgrade_one(self, rep: Reporter, upd: BaseUpdater) -> str:
        rep.application = upd.name
        rep(f"Updating Application {upd.name}...")
        try:
            return upd.upgrade(rep)
        finally:
            upd.refresh()

    def upgrade(self, name: str | None) -> str:
        """update_manager.md "Perform an Upgrade" (``name`` None: ``full``)."""
        if name is None:
            return self.full()
        upd = self._get(name)

        def work(rep: Reporter) -> str:
            return self._upgrade_one(rep, upd)
        return self._run(name, work)

    def full(self) -> str:
        """update_manager.md "Perform a full update": system, extensions,
        klipper, moonraker, each when valid and behind."""
        order = (["system"] if "system" in self.updaters else []) + [
            n for n in self.updaters if n not in ("system", "klipper", "moonraker")] + [
            "klipper", "moonraker"]

        def work(rep: Reporter) -> str:
            for name in order:
                upd = self.updaters[name]
                if getattr(upd, "is_valid", True) and self._behind(upd):
                    rep(self._upgrade_one(rep, upd))
            rep.application = "full"
            return "Full Update Complete"
        return self._run("full", work)

    @staticmethod
    def _behind(upd: BaseUpdater) -> bool:
        st = upd.status()
        if st.get("configured_type") == "system":
            return bool(st.get("package_count"))
        return st.get("version") != st.get("remote_version") or \
            st.get("current_hash", "") != st.get("remote_hash", st.get("current_hash", ""))

    def rollback(self, name: str) -> str:
        """update_manager.md "Rollback to the previous version"."""
        upd = self._get(name)

        def work(rep: Reporter) -> str:
            try:
                return upd.rollback(rep)
            finally:
                upd.refresh()
        return self._run(name, work)

    def recover(self, name: str, hard: bool) -> str:
        """update_manager.md "Recover a corrupt repo" (soft or hard)."""
        upd = self._get(name)

        def work(rep: Reporter) -> str:
            try:
                return upd.recover(rep, hard)
            finally:
                upd.refresh()
        return self._run(name, work)

    def in_refresh_window(self, hour: int) -> bool:
        """True when local ``hour`` is inside ``refresh_window`` (wraps midnight)."""
        start, end = self.refresh_window
        if start <= end:
            return start <= hour < end if start != end else hour == start
        return hour >= start or hour < end


def load_component(server: Any, section: Any) -> UpdateManager:
    """Build the update manager from ``[update_manager]``."""
    return UpdateManager(server, section)


