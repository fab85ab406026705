"""Service state monitors of the machine component: the command-line
providers poll (``systemctl``/``supervisorctl``) every ``POLL_INTERVAL``
seconds; the D-Bus provider follows systemd's ``PropertiesChanged`` signals
(web_api.md "Machine APIs", "Service State Changed")."""
from __future__ import annotations

from typing import Any

import gevent

POLL_INTERVAL = 30.0          # seconds between status polls of the CLI providers


def poll(provider: Any) -> None:
    """Call ``provider.refresh()`` every ``POLL_INTERVAL`` seconds, forever."""
    while True:
        gevent.sleep(POLL_INTERVAL)
        provider.refresh()


def follow_signals(provider: Any) -> None:
    """Apply each D-Bus signal ``provider`` receives (``provider.next_signal()``
    blocks for one), forever."""
    while True:
        provider.handle_signal(provider.next_signal())
