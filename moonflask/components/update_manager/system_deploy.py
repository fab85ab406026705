"""The ``system`` updater: OS packages.

Two back ends: PackageKit over the system D-Bus (jeepney) when
``enable_packagekit`` is set and a PackageKit daemon answers, else the apt
command line (``apt-get``; ``sudo`` when not root).  Status: ``package_count``
and ``package_list`` of upgradable packages.  Spec: update_manager.md
"System Status", "Update System Packages"; configuration.md
``enable_packagekit``.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from .base import BaseUpdater, Reporter, UpdateError
from .packagekit import PackageKit, PackageKitError

log = logging.getLogger(__name__)

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


class SystemUpdater(BaseUpdater):
    """OS package updates.

    Args:
        manager: the UpdateManager.
        use_packagekit: try PackageKit before the apt command line.
    """

    configured_type = "system"

    def __init__(self, manager: Any, use_packagekit: bool) -> None:
        super().__init__(manager, "system", None)
        self.use_packagekit = use_packagekit
        self.packages: list[str] = []
        self.package_ids: list[str] = []

    def _packagekit(self) -> PackageKit | None:
        if not self.use_packagekit:
            return None
        pk = PackageKit()
        return pk if pk.available() else None

    def _apt(self, args: list[str], rep: Any = None) -> None:
        cmd = ["apt-get", "-y", "-q", *args]
        if os.geteuid() != 0:
            cmd = ["sudo", "-n", *cmd]
        env_cmd = ["env", *(f"{k}={v}" for k, v in APT_ENV.items()), *cmd]
        self.manager.run_streaming(env_cmd, rep or (lambda *_a, **_k: None))

    def refresh(self) -> None:
        """Refresh the package index and list the upgradable packages; a
        failure is logged and reported in ``server.info`` warnings."""
        try:
            pk = self._packagekit()
            if pk is not None:
                pk.refresh_cache()
                self.package_ids = pk.get_updates()
                self.packages = sorted({pid.split(";")[0] for pid in self.package_ids})
            elif shutil.which("apt-get"):
                self._apt(["update"])
                self.packages = self._apt_upgradable()
            else:
                self._warn("no package manager found (PackageKit or apt-get)")
        except (UpdateError, PackageKitError) as err:
            self._warn(str(err))
        finally:
            self.mark_refreshed()

    def _warn(self, message: str) -> None:
        log.error("system package refresh failed: %s", message)
        text = f"[update_manager]: system package refresh failed: {message}"
        warnings = self.server.config.runtime_warnings
        if text not in warnings:
            warnings.append(text)

    def _apt_upgradable(self) -> list[str]:
        from gevent import subprocess
        out = subprocess.run(["apt-get", "-s", "-q", "dist-upgrade"], capture_output=True,
                             text=True, env=dict(os.environ, LC_ALL="C", **APT_ENV)).stdout
        return sorted({line.split()[1] for line in out.splitlines()
                       if line.startswith("Inst ")})

    def status(self) -> dict[str, Any]:
        """The System Status object."""
        return {"name": "system", "configured_type": "system",
                "package_count": len(self.packages), "package_list": list(self.packages)}

    def upgrade(self, rep: Reporter) -> str:
        """Upgrade every upgradable package.  Raises UpdateError."""
        rep("Updating packages...")
        pk = self._packagekit()
        try:
            if pk is not None:
                pk.update_packages(self.package_ids or pk.get_updates(), rep)
            else:
                self._apt(["update"], rep)
                self._apt(["upgrade", "--with-new-pkgs"], rep)
        except PackageKitError as err:
            raise UpdateError(f"System update failed: {err}") from None
        return "Package update finished..."

    def install_packages(self, pkgs: list[str], rep: Any) -> None:
        """Install ``pkgs`` (a repo's system dependencies).  Raises UpdateError."""
        rep(f"Installing system dependencies: {' '.join(pkgs)}")
        pk = self._packagekit()
        try:
            if pk is not None:
                pk.install_packages(pkgs, rep)
            else:
                self._apt(["install", *pkgs], rep)
        except PackageKitError as err:
            raise UpdateError(f"Installing {' '.join(pkgs)} failed: {err}") from None
