"""The announcements refresher: updates every subscribed feed every
``UPDATE_INTERVAL`` seconds (web_api.md "Announcement APIs")."""
from __future__ import annotations

from typing import Any

import gevent

UPDATE_INTERVAL = 1800.0    # seconds


def run(announcements: Any) -> None:
    """Refresh ``announcements`` (a
    :class:`moonflask.components.announcements.Announcements`) forever."""
    while True:
        announcements.update()
        gevent.sleep(UPDATE_INTERVAL)
