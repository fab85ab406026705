"""Endpoints of the announcements API group.  Spec: web_api.md "Announcement APIs".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import (ApiBlueprint, ApiRequest)
from ..components.announcements import Announcements

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("announcements", __name__)


def _ann(req: ApiRequest) -> Announcements:
    return req.server.lookup_component("announcements")


@blueprint.endpoint("/server/announcements/list", ["GET"])
def announcements_list(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List announcements"."""
    ann = _ann(req)
    return {"entries": ann.list_entries(req.args.get_boolean("include_dismissed", True)),
            "feeds": ann.feeds()}


@blueprint.endpoint("/server/announcements/update", ["POST"])
def announcements_update(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Update announcements"."""
    ann = _ann(req)
    modified = ann.update()
    return {"entries": ann.list_entries(True), "modified": modified}


@blueprint.endpoint("/server/announcements/dismiss", ["POST"])
def announcements_dismiss(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Dismiss an announcement"."""
    wake = req.args.get_float("wake_time", None)
    if wake is not None and wake <= 0:
        wake = None
    return _ann(req).dismiss(req.args.get_str("entry_id"), wake)


@blueprint.endpoint("/server/announcements/feeds", ["GET"])
def announcements_feeds(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "List announcement feeds"."""
    return {"feeds": _ann(req).feeds()}


@blueprint.endpoint("/server/announcements/feed", ["POST", "DELETE"])
def announcements_feed(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Add an announcement feed" / "Remove an announcement feed"."""
    ann = _ann(req)
    name = req.args.get_str("name")
    if req.method == "POST":
        return ann.add_feed(name)
    return ann.remove_feed(name)
