"""The ``web``, ``zip`` and ``executable`` updaters: software deployed from
GitHub release assets (zip files of front ends such as Mainsail/Fluidd or of
applications; a pre-built binary for ``executable``, which replaces the
asset file in a copy of the folder instead of unpacking).

The install folder holds ``release_info.json`` (``project_name``,
``project_owner``, ``version``, optional ``asset_name``, default
``NAME.zip``).  A refresh asks GitHub's releases API (``GET
/repos/OWNER/REPO/releases``; the base URL is ``MOONFLASK_GITHUB_API_URL``,
default https://api.github.com) and records its rate-limit headers.  An
upgrade downloads the asset with requests, checks its SHA-256 when the
release gives one (the asset's ``digest``, or a ``ASSET.sha256`` asset),
unpacks it into ``PATH.mf-new``, carries ``persistent_files`` over, and
swaps it in with renames; the previous release stays in ``PATH.mf-rollback``
for ``rollback``.  Every step is journaled: a crash before the swap leaves
the old release, a crash during it is completed at start.
Spec: update_manager.md "Net Hosted Status", configuration.md "Web type",
"Zip Application Configuration", "Executable Configuration", "The
release_info.json file".
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import zipfile
from typing import Any

import requests

from ...config import ConfigError
from . import journal as jn
from .base import BaseUpdater, Reporter, UpdateError

log = logging.getLogger(__name__)

API_URL = os.environ.get("MOONFLASK_GITHUB_API_URL", "https://api.github.com").rstrip("/")
TIMEOUT = 30.0            # seconds for one GitHub API request
DOWNLOAD_TIMEOUT = 600.0  # seconds of silence before a download is abandoned
NET_CHANNELS = ("stable", "beta")


class WebUpdater(BaseUpdater):
    """A ``web``, ``zip`` or ``executable`` updater.

    Args:
        manager: the UpdateManager.
        name: the section's NAME.
        section: ``[update_manager NAME]``.
        kind: ``web``, ``zip`` or ``executable``.
    Raises:
        ConfigError: ``repo`` or ``path`` missing, ``repo`` not OWNER/NAME.
    """

    prefix = "Web Client"

    def __init__(self, manager: Any, name: str, section: Any, kind: str) -> None:
        super().__init__(manager, name, section, "stable")
        self.configured_type = kind
        self.prefix = "Web Client" if kind == "web" else "Application"  # zip, executable
        self.channel_invalid = self.channel not in NET_CHANNELS
        repo = section.get("repo").strip().strip("/")
        if repo.count("/") != 1:
            raise ConfigError(f"[update_manager {name}]: option 'repo' must be "
                              f"OWNER/NAME, not '{repo}'")
        self.owner, self.repo_name = repo.split("/")
        self.path = os.path.abspath(os.path.expanduser(section.get("path")))
        self.persistent_files = section.getlist("persistent_files", [])
        self.managed_services, self.virtualenv, self.requirements = [], None, None
        if kind in ("zip", "executable"):
            is_service = section.getboolean("is_system_service", True)
            self.managed_services = section.getlist(
                "managed_services", [name] if is_service else [], separator=None) or []
        if kind == "zip":
            venv = section.get("virtualenv", None)
            self.virtualenv = os.path.expanduser(venv) if venv else None
            self.requirements = section.get("requirements", None)
        self.version = "?"
        self.remote_version = "?"
        self.asset_name = f"{name}.zip"
        self.remote_asset: dict[str, Any] | None = None
        self.remote_digest: str | None = None
        self.last_error = ""
        self.warnings: list[str] = []
        self.anomalies: list[str] = []

    # -- status -------------------------------------------------------------
    def _read_release_info(self) -> dict[str, Any] | None:
        info = jn.read_json(os.path.join(self.path, "release_info.json"))
        return info if isinstance(info, dict) else None

    def refresh(self) -> None:
        """Read release_info.json and the newest release of the channel."""
        self.warnings, self.anomalies, self.last_error = [], [], ""
        self.remote_asset = None
        try:
            info = self._read_release_info()
            if info is None:
                self.warnings.append(f"No valid release_info.json in {self.path}")
            else:
                self.version = str(info.get("version", "?"))
                self.asset_name = str(info.get("asset_name") or self.asset_name)
                if self.configured_type == "executable" and not info.get("asset_name"):
                    self.warnings.append("release_info.json of an executable must name "
                                         "its asset_name")
                if (info.get("project_owner"), info.get("project_name")) != \
                        (self.owner, self.repo_name):
                    self.anomalies.append(
                        f"release_info.json names {info.get('project_owner')}/"
                        f"{info.get('project_name')}, configured repo is "
                        f"{self.owner}/{self.repo_name}")
            if self.channel_invalid:
                self.warnings.append(f"Channel '{self.channel}' is not supported by type "
                                     f"{self.configured_type} (stable or beta)")
            self._fetch_release()
        except UpdateError as err:
            self.last_error = str(err)
            log.error("%s %s: %s", self.prefix, self.name, err)
        finally:
            self.mark_refreshed()
        note = self.manager.journal.get(self.name).get("recovery_note")
        if note:
            self.anomalies.append(note)

    def _github(self, url: str) -> Any:
        limits = self.manager.github_limits
        reset = limits.get("github_limit_reset_time") or 0
        if limits.get("github_requests_remaining") == 0 and reset > time.time():
            raise UpdateError("GitHub rate limit reached; it resets at "
                              + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(reset)))
        try:
            resp = requests.get(url, timeout=TIMEOUT,
                                headers={"Accept": "application/vnd.github+json"})
        except requests.RequestException as err:
            raise UpdateError(f"GitHub request failed: {err}") from None
        for header, key in (("X-RateLimit-Limit", "github_rate_limit"),
                            ("X-RateLimit-Remaining", "github_requests_remaining"),
                            ("X-RateLimit-Reset", "github_limit_reset_time")):
            if header in resp.headers:
                try:
                    limits[key] = int(resp.headers[header])
                except ValueError:
                    pass
        if resp.status_code != 200:
            raise UpdateError(f"GitHub answered {resp.status_code} for {url}")
        try:
            return resp.json()
        except ValueError:
            raise UpdateError(f"GitHub sent invalid JSON for {url}") from None

    def _fetch_release(self) -> None:
        releases = self._github(f"{API_URL}/repos/{self.owner}/{self.repo_name}/releases")
        if not isinstance(releases, list):
            raise UpdateError("GitHub releases response is not a list")
        for rel in releases:
            if rel.get("draft") or (rel.get("prerelease") and self.channel != "beta"):
                continue
            assets = {a.get("name"): a for a in rel.get("assets", [])}
            asset = assets.get(self.asset_name)
            if asset is None:
                continue
            self.remote_version = str(rel.get("tag_name", "?"))
            self.remote_asset = asset
            digest = asset.get("digest") or ""
            self.remote_digest = digest[7:].lower() if digest.startswith("sha256:") else None
            sums = assets.get(self.asset_name + ".sha256")
            if self.remote_digest is None and sums is not None:
                self.remote_digest = self._download_text(sums).split()[0].lower()
            return
        self.warnings.append(f"No {self.channel} release with asset {self.asset_name} "
                             f"found for {self.owner}/{self.repo_name}")

    @staticmethod
    def _download_text(asset: dict[str, Any]) -> str:
        try:
            resp = requests.get(asset["browser_download_url"], timeout=TIMEOUT)
            resp.raise_for_status()
        except (requests.RequestException, KeyError) as err:
            raise UpdateError(f"Checksum download failed: {err}") from None
        return resp.text

    @property
    def is_valid(self) -> bool:
        """Updates possible: release_info read, no warnings."""
        return not self.warnings and self.version != "?"

    def status(self) -> dict[str, Any]:
        """The Net Hosted Status object."""
        return {
            "name": self.name, "configured_type": self.configured_type,
            "channel": self.channel, "channel_invalid": self.channel_invalid,
            "debug_enabled": bool(self.server.debug), "owner": self.owner,
            "repo_name": self.repo_name, "last_error": self.last_error,
            "version": self.version, "remote_version": self.remote_version,
            "rollback_version": self.manager.journal.get(self.name).get(
                "rollback_version", self.version),
            "is_valid": self.is_valid,
            "anomalies": list(self.anomalies) if self.report_anomalies else [],
            "warnings": list(self.warnings), "info_tags": list(self.info_tags),
        }

    # -- updates --------------------------------------------------------------
    def _paths(self) -> tuple[str, str, str]:
        return self.path + ".mf-new", self.path + ".mf-rollback", self.path + ".mf-trash"

    def upgrade(self, rep: Reporter) -> str:
        """Download, verify, unpack and swap in the newest release."""
        return self._install(rep, force=False)

    def _install(self, rep: Reporter, force: bool) -> str:
        if not self.is_valid:
            raise UpdateError(f"{self.prefix} {self.name}: update refused: "
                              f"{'; '.join(self.warnings) or 'not valid'}")
        if self.remote_asset is None or (self.remote_version == self.version and not force):
            return f"{self.prefix} {self.name}: already up to date"
        new, _, _ = self._paths()
        rec = self.manager.journal.begin(self.name, "upgrade", path=self.path,
                                         from_version=self.version,
                                         to_version=self.remote_version,
                                         proc_id=rep.proc_id)
        try:
            self._download_and_unpack(new, rep)
        except (UpdateError, OSError, zipfile.BadZipFile) as err:
            shutil.rmtree(new, ignore_errors=True)
            self.manager.journal.finish(rec)
            raise UpdateError(f"{self.prefix} {self.name}: {err}") from None
        self.manager.journal.step(rec, "swap")
        self._swap_in(new)
        self.manager.journal.put(self.name, rollback_version=rec["from_version"],
                                 recovery_note=None)
        self._after_swap(rec, rep)
        return f"{self.prefix} {self.name}: " + ("Reinstall Complete" if force
                                                 else "Update Finished...")

    def _download_and_unpack(self, new: str, rep: Reporter) -> None:
        assert self.remote_asset is not None
        url = self.remote_asset.get("browser_download_url")
        if not url:
            raise UpdateError("the release asset has no download url")
        rep(f"{self.prefix} {self.name}: Downloading {self.asset_name} "
            f"({self.remote_version})...")
        tmpzip = self.path + ".mf-download"
        sha = hashlib.sha256()
        try:
            with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as resp:
                resp.raise_for_status()
                with open(tmpzip, "wb") as fh:
                    for chunk in resp.iter_content(65536):
                        sha.update(chunk)
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
        except requests.RequestException as err:
            raise UpdateError(f"download failed: {err}") from None
        try:
            if self.remote_digest is not None:
                if sha.hexdigest() != self.remote_digest:
                    raise UpdateError(f"checksum mismatch for {self.asset_name}: expected "
                                      f"{self.remote_digest}, got {sha.hexdigest()}")
                rep(f"{self.prefix} {self.name}: SHA-256 checksum verified")
            shutil.rmtree(new, ignore_errors=True)
            if self.configured_type == "executable":
                self._place_executable(tmpzip, new)
                return
            os.makedirs(new)
            rep(f"{self.prefix} {self.name}: Unpacking...")
            with zipfile.ZipFile(tmpzip) as zf:
                for member in zf.namelist():
                    target = os.path.realpath(os.path.join(new, member))
                    if not target.startswith(os.path.realpath(new) + os.sep):
                        raise UpdateError(f"unsafe path in the archive: {member}")
                zf.extractall(new)
        finally:
            if os.path.exists(tmpzip):
                os.unlink(tmpzip)
        if not os.path.isfile(os.path.join(new, "release_info.json")):
            raise UpdateError("the release archive has no release_info.json")
        for rel in self.persistent_files:
            src = os.path.join(self.path, rel)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(new, rel), symlinks=True,
                                dirs_exist_ok=True)
            elif os.path.exists(src):
                os.makedirs(os.path.dirname(os.path.join(new, rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(new, rel))
        jn.syncfs(new)

    def _place_executable(self, download: str, new: str) -> None:
        """``new`` = a copy of the install folder with the downloaded binary
        in place of the old one and release_info.json naming its version."""
        shutil.copytree(self.path, new, symlinks=True)
        target = os.path.join(new, self.asset_name)
        os.replace(download, target)
        os.chmod(target, 0o755)
        info = self._read_release_info() or {}
        info["version"] = self.remote_version
        jn.write_json_atomic(os.path.join(new, "release_info.json"), info)
        jn.syncfs(new)

    def _swap_in(self, new: str) -> None:
        """``PATH.mf-rollback`` <- PATH <- ``new`` with renames (journal step ``swap``)."""
        _, rollback, trash = self._paths()
        shutil.rmtree(trash, ignore_errors=True)
        if os.path.exists(rollback):
            os.rename(rollback, trash)
        if os.path.exists(self.path):
            os.rename(self.path, rollback)
        os.rename(new, self.path)
        jn.fsync_dir(os.path.dirname(self.path))
        shutil.rmtree(trash, ignore_errors=True)

    def _after_swap(self, rec: dict[str, Any], rep: Any) -> None:
        if self.virtualenv and self.requirements:
            rep(f"{self.prefix} {self.name}: Updating python packages...")
            self.manager.run_streaming(
                [os.path.join(self.virtualenv, "bin", "python"), "-m", "pip", "install",
                 "--disable-pip-version-check", "-r",
                 os.path.join(self.path, self.requirements)], rep)
        self.manager.journal.step(rec, jn.SERVICES)
        failed = self._restart_services(rep)
        if failed and rec["op"] == "upgrade":
            rep(f"{self.prefix} {self.name}: service {failed} did not come back; "
                f"rolling back to {rec['from_version']}")
            self._swap_back()
            self._restart_services(rep)
            note = (f"Rolled back to {rec['from_version']}: service {failed} did not "
                    f"start after the update to {rec['to_version']}")
            self.manager.journal.put(self.name, recovery_note=note)
            self.manager.journal.finish(rec)
            raise UpdateError(f"{self.prefix} {self.name}: {note}")
        self.manager.journal.finish(rec)

    def _swap_back(self) -> None:
        """Exchange PATH and ``PATH.mf-rollback`` (persistent files kept)."""
        _, rollback, trash = self._paths()
        if not os.path.isdir(rollback):
            raise UpdateError(f"{self.prefix} {self.name}: no previous release kept")
        for rel in self.persistent_files:
            src = os.path.join(self.path, rel)
            if os.path.isfile(src):
                shutil.copy2(src, os.path.join(rollback, rel))
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(self.path, trash)
        os.rename(rollback, self.path)
        os.rename(trash, rollback)
        jn.fsync_dir(os.path.dirname(self.path))

    def rollback(self, rep: Reporter) -> str:
        """Restore the previous release (``PATH.mf-rollback``)."""
        rb_version = self.manager.journal.get(self.name).get("rollback_version")
        if not rb_version or not os.path.isdir(self._paths()[1]):
            raise UpdateError(f"{self.prefix} {self.name}: no rollback version available")
        rec = self.manager.journal.begin(self.name, "rollback", path=self.path,
                                         from_version=self.version, to_version=rb_version,
                                         proc_id=rep.proc_id)
        self.manager.journal.step(rec, "swap")
        self._swap_back()
        self.manager.journal.put(self.name, rollback_version=self.version)
        self._after_swap(rec, rep)
        return f"{self.prefix} {self.name}: Rollback Complete"

    def recover(self, rep: Reporter, hard: bool) -> str:
        """Re-install the newest release (there is no repo to reset)."""
        return self._install(rep, force=True)

    def resume(self, rec: dict[str, Any]) -> str:
        """Finish a swap a crash interrupted, or drop a half-made download."""
        new, rollback, trash = self._paths()
        if rec.get("step") == jn.BEGIN:
            shutil.rmtree(new, ignore_errors=True)
            for leftover in (self.path + ".mf-download",):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            self.manager.journal.finish(rec)
            return (f"Interrupted update of {self.name} to {rec.get('to_version')} found "
                    f"at start: kept {rec.get('from_version')}")
        if not os.path.exists(self.path):
            if rec["op"] == "upgrade" and os.path.isdir(new):
                os.rename(new, self.path)
            elif os.path.isdir(trash):
                os.rename(trash, self.path)
            elif os.path.isdir(rollback):
                os.rename(rollback, self.path)
        if rec["op"] == "rollback" and os.path.isdir(trash) and not os.path.exists(rollback):
            os.rename(trash, rollback)
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)
        jn.fsync_dir(os.path.dirname(self.path))
        self.manager.journal.finish(rec)
        info = self._read_release_info() or {}
        return (f"Interrupted {'update' if rec['op'] == 'upgrade' else rec['op']} of "
                f"{self.name} completed at start: at {info.get('version', '?')}")
