"""The ``machine.update.*`` endpoints.  Spec: update_manager.md (wins),
web_api.md "Update Manager APIs".  Thin handlers over the ``update_manager``
component (moonflask/components/update_manager/)."""
from __future__ import annotations

from typing import Any

from ..api import ApiBlueprint, ApiRequest

blueprint = ApiBlueprint("update_manager", __name__, component="update_manager")


def _um(req: ApiRequest) -> Any:
    return req.server.lookup_component("update_manager")


@blueprint.endpoint("/machine/update/status", ["GET"])
def status(req: ApiRequest) -> dict[str, Any]:
    """"Get update status" (``refresh`` is deprecated: refreshes unless busy,
    printing, initialising or refreshed within 60 s)."""
    return _um(req).status(req.args.get_boolean("refresh", False))


@blueprint.endpoint("/machine/update/refresh", ["POST"])
def refresh(req: ApiRequest) -> dict[str, Any]:
    """"Refresh update status" of ``name`` (all when omitted)."""
    return _um(req).refresh(req.args.get_str("name", None))


@blueprint.endpoint("/machine/update/upgrade", ["POST"])
def upgrade(req: ApiRequest) -> str:
    """"Perform an Upgrade" of ``name`` (everything when omitted)."""
    return _um(req).upgrade(req.args.get_str("name", None))


@blueprint.endpoint("/machine/update/full", ["POST"])
def full(req: ApiRequest) -> str:
    """"Perform a full update" (deprecated)."""
    return _um(req).full()


@blueprint.endpoint("/machine/update/moonraker", ["POST"])
def moonraker(req: ApiRequest) -> str:
    """"Update Moonraker" (deprecated): moonflask's own checkout."""
    return _um(req).upgrade("moonraker")


@blueprint.endpoint("/machine/update/klipper", ["POST"])
def klipper(req: ApiRequest) -> str:
    """"Update Klipper" (deprecated)."""
    return _um(req).upgrade("klipper")


@blueprint.endpoint("/machine/update/client", ["POST"])
def client(req: ApiRequest) -> str:
    """"Update Client" (deprecated) ``name``."""
    return _um(req).upgrade(req.args.get_str("name", None))


@blueprint.endpoint("/machine/update/system", ["POST"])
def system(req: ApiRequest) -> str:
    """"Update System Packages" (deprecated)."""
    return _um(req).upgrade("system")


@blueprint.endpoint("/machine/update/recover", ["POST"])
def recover(req: ApiRequest) -> str:
    """"Recover a corrupt repo": ``name`` (required), ``hard`` (default false)."""
    name = req.args.get_str("name")
    return _um(req).recover(name, req.args.get_boolean("hard", False))


@blueprint.endpoint("/machine/update/rollback", ["POST"])
def rollback(req: ApiRequest) -> str:
    """"Rollback to the previous version" of ``name`` (required)."""
    return _um(req).rollback(req.args.get_str("name"))
