"""Endpoints of the notifiers API group.  Spec: web_api.md "Notifier APIs".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import (ApiBlueprint, ApiRequest)
from ..components.notifier import Notifiers

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("notifiers", __name__)


def _notifiers(req: ApiRequest) -> Notifiers:
    return req.server.lookup_component("notifier")


@blueprint.endpoint("/server/notifiers/list", ["GET"])
def notifiers_list(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List Notifiers"."""
    return {"notifiers": [n.info() for n in _notifiers(req).notifiers.values()]}
