"""The update refresher: every ``CHECK_PERIOD`` seconds, inside
``[update_manager] refresh_window`` and never while printing, refreshes each
updater whose ``refresh_interval`` (hours) has elapsed and broadcasts
``notify_update_refreshed``.  Started by the update manager when
``enable_auto_refresh`` is set.  Spec: configuration.md ``[update_manager]``,
web_api.md "Update Manager Refreshed".
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import gevent

log = logging.getLogger(__name__)

# seconds between checks ("roughly every 1 hour"); MOONFLASK_UPDATE_CHECK_PERIOD
# shortens it for tests
CHECK_PERIOD = float(os.environ.get("MOONFLASK_UPDATE_CHECK_PERIOD", "3600"))


def run(manager: Any) -> None:
    """Never returns.  ``manager``: the UpdateManager."""
    while True:
        gevent.sleep(CHECK_PERIOD)
        now = time.time()
        if not manager.in_refresh_window(time.localtime(now).tm_hour):
            continue
        done = manager.auto_refresh(now)
        if done:
            log.info("update refresher: refreshed %s", ", ".join(done))
