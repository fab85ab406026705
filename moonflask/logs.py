"""Logging to ``DATA_PATH/logs/moonraker.log`` with rollover.

Spec: server.md "Rollover Logs".  The file rolls over at midnight and on
request (``server.logs.rollover``); the three newest old files are kept.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys

FORMAT = "%(asctime)s [%(filename)s:%(funcName)s()] - %(message)s"


class _RotatingLog(logging.handlers.TimedRotatingFileHandler):
    """Rolls over at midnight and on request.  A second rollover on the same
    day keeps the first one's file (``moonraker.log.DATE.1``, ``.2`` ...)
    instead of overwriting it, as the standard handler would."""

    def rotation_filename(self, default_name: str) -> str:
        name, n = default_name, 1
        while os.path.exists(name):
            name = f"{default_name}.{n}"
            n += 1
        return name


class LogManager:
    """Sets up the root logger.

    Args:
        log_file: the log path, or None to log to stderr only.
        verbose: DEBUG level when True, else INFO.
    """

    def __init__(self, log_file: str | None, verbose: bool = False) -> None:
        self.log_file = log_file
        self.handler: _RotatingLog | None = None
        root = logging.getLogger()
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        for old in [h for h in root.handlers if getattr(h, "_moonflask", False)]:
            root.removeHandler(old)
            old.close()
        if log_file:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            self.handler = _RotatingLog(log_file, when="midnight", backupCount=3,
                                        encoding="utf-8")
            handler: logging.Handler = self.handler
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._moonflask = True  # type: ignore[attr-defined]
        root.addHandler(handler)

    def rollover(self) -> None:
        """Roll the moonraker log over now.  Raises ApiError-free OSError
        when the file cannot be renamed."""
        if self.handler is None:
            raise OSError("moonraker is not logging to a file")
        self.handler.doRollover()
