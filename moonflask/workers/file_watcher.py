"""The file watcher: waits on the inotify descriptor and dispatches each
batch of events to the file manager (changes made on disk by other programs,
web_api.md "File List Changed")."""
from __future__ import annotations

from typing import Any

import gevent
from gevent.socket import wait_read

BATCH_DELAY = 0.05   # seconds to collect the halves of a rename


def run(watcher: Any) -> None:
    """Dispatch the events of ``watcher`` (a
    :class:`moonflask.components.file_manager.watcher.FileWatcher`) forever."""
    fd = watcher.fileno()
    while True:
        wait_read(fd)
        gevent.sleep(BATCH_DELAY)
        watcher.dispatch_pending()
