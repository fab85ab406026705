"""A small PackageKit client over the system D-Bus (jeepney).

Each operation creates a transaction (``CreateTransaction`` on
``org.freedesktop.PackageKit``), subscribes to its signals, calls the
method and collects ``Package`` signals until ``Finished``; ``ErrorCode``
makes it fail.  The bus address comes from ``DBUS_SYSTEM_BUS_ADDRESS``.
Spec: configuration.md ``enable_packagekit``; PackageKit's D-Bus API
(``RefreshCache(b)``, ``GetUpdates(t)``, ``UpdatePackages(tas)``,
``Resolve(tas)``, ``InstallPackages(tas)``).
"""
from __future__ import annotations

import logging
import queue
from typing import Any, Callable

log = logging.getLogger(__name__)

PK_BUS = "org.freedesktop.PackageKit"
PK_PATH = "/org/freedesktop/PackageKit"
PK_IFACE = "org.freedesktop.PackageKit"
PK_TRANSACTION = "org.freedesktop.PackageKit.Transaction"
FILTER_NONE = 1 << 1          # PK_FILTER_ENUM_NONE
FILTER_NOT_INSTALLED = 1 << 3
FLAG_ONLY_TRUSTED = 1 << 1    # PK_TRANSACTION_FLAG_ENUM_ONLY_TRUSTED
TIMEOUT = 10.0                # seconds for a method reply
TRANSACTION_TIMEOUT = 3600.0  # seconds for a whole transaction


class PackageKitError(Exception):
    """PackageKit is unreachable or a transaction reported an error."""


class PackageKit:
    """One connection to PackageKit (opened per operation, closed after)."""

    def _router(self) -> Any:
        from jeepney.io.threading import DBusRouter, open_dbus_connection
        try:
            return DBusRouter(open_dbus_connection(bus="SYSTEM"))
        except Exception as err:
            raise PackageKitError(f"D-Bus not available: {err}") from None

    def available(self) -> bool:
        """True when a PackageKit daemon answers on the system bus."""
        try:
            router = self._router()
        except PackageKitError:
            return False
        try:
            from jeepney import DBusAddress, Properties
            addr = DBusAddress(PK_PATH, bus_name=PK_BUS, interface=PK_IFACE)
            reply = router.send_and_get_reply(Properties(addr).get("VersionMajor"),
                                              timeout=TIMEOUT)
            return reply.header.message_type.name == "method_return"
        except Exception as err:
            log.info("PackageKit not reachable: %s", err)
            return False
        finally:
            router.close()

    def _transaction(self, method: str, signature: str, body: tuple,
                     on_package: Callable[[int, str, str], None] | None = None,
                     rep: Callable[[str], None] | None = None) -> None:
        from jeepney import (DBusAddress, HeaderFields, MatchRule, message_bus,
                             new_method_call)
        from jeepney.wrappers import unwrap_msg
        router = self._router()
        try:
            pk = DBusAddress(PK_PATH, bus_name=PK_BUS, interface=PK_IFACE)
            (tpath,) = unwrap_msg(router.send_and_get_reply(
                new_method_call(pk, "CreateTransaction"), timeout=TIMEOUT))
            rule = MatchRule(type="signal", interface=PK_TRANSACTION, path=tpath)
            unwrap_msg(router.send_and_get_reply(message_bus.AddMatch(rule),
                                                 timeout=TIMEOUT))
            with router.filter(rule, queue=queue.Queue(), bufsize=0) as signals:
                taddr = DBusAddress(tpath, bus_name=PK_BUS, interface=PK_TRANSACTION)
                unwrap_msg(router.send_and_get_reply(
                    new_method_call(taddr, method, signature, body), timeout=TIMEOUT))
                error = None
                while True:
                    try:
                        msg = signals.get(timeout=TRANSACTION_TIMEOUT)
                    except queue.Empty:
                        raise PackageKitError(f"{method} timed out") from None
                    member = msg.header.fields.get(HeaderFields.member)
                    if member == "Package" and on_package is not None:
                        info, pid, summary = msg.body
                        on_package(info, pid, summary)
                    elif member == "ErrorCode":
                        error = f"{method}: {msg.body[1]} (code {msg.body[0]})"
                    elif member == "Finished":
                        break
                    if rep is not None and member == "Package":
                        rep(f"{msg.body[1]}: {msg.body[2]}")
                if error:
                    raise PackageKitError(error)
        except PackageKitError:
            raise
        except Exception as err:
            raise PackageKitError(f"{method} failed: {err}") from None
        finally:
            router.close()

    def refresh_cache(self) -> None:
        """``RefreshCache(force=False)``."""
        self._transaction("RefreshCache", "b", (False,))

    def get_updates(self) -> list[str]:
        """Package ids with an update available."""
        ids: list[str] = []
        self._transaction("GetUpdates", "t", (FILTER_NONE,),
                          lambda _i, pid, _s: ids.append(pid))
        return ids

    def update_packages(self, ids: list[str], rep: Callable[[str], None]) -> None:
        """Install the updates ``ids``, reporting each package."""
        if ids:
            self._transaction("UpdatePackages", "tas", (FLAG_ONLY_TRUSTED, ids), rep=rep)

    def install_packages(self, names: list[str], rep: Callable[[str], None]) -> None:
        """Resolve ``names`` to not-installed package ids and install them."""
        ids: list[str] = []
        self._transaction("Resolve", "tas", (FILTER_NOT_INSTALLED, names),
                          lambda _i, pid, _s: ids.append(pid))
        if ids:
            self._transaction("InstallPackages", "tas", (FLAG_ONLY_TRUSTED, ids), rep=rep)
