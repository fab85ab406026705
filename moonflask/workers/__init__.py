"""Workers: the loops that run for the life of the server.

Each module of this package holds one forever-loop (the Klippy connection,
the proc-stats sampler, the temperature sampler, the file watcher, ...).  A
loop is a plain function ``loop(*args)`` that never returns; it is started
through the one :class:`Supervisor` of the server (``server.workers``), which
restarts it with backoff when it raises (or returns), logs every failure
with its traceback, and reports a worker that keeps failing in
``server.info`` ``warnings``.  DESIGN.md "Concurrency".

Short-lived greenlets (one request's fan-out, a delayed action) are spawned
where they are needed; nothing else spawns a loop that never ends.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import gevent

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5     # seconds before the first restart
BACKOFF_MAX = 30.0    # seconds, the longest wait between restarts
HEALTHY_AFTER = 60.0  # seconds of running that reset the backoff
WARN_AFTER = 5        # consecutive failures before server.info warns


class WorkerFault(Exception):
    """Raised inside a worker by :meth:`Supervisor.inject_fault` (``-g`` debug
    endpoint ``/debug/workers/fault``), to show that it is restarted."""


class Worker:
    """One supervised loop.

    Attributes:
        name: the worker's name (unique within a server).
        restarts: how often the loop was restarted.
        failures: consecutive failures since it last ran ``HEALTHY_AFTER`` s.
        last_error: ``"ExcType: message"`` of the last failure, or None.
    """

    def __init__(self, supervisor: "Supervisor", name: str,
                 loop: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.supervisor = supervisor
        self.name = name
        self.loop = loop
        self.args = args
        self.restarts = 0
        self.failures = 0
        self.last_error: str | None = None
        self._warned = False
        self.greenlet = gevent.spawn(self._run)

    @property
    def running(self) -> bool:
        """True while the supervising greenlet is alive."""
        return not self.greenlet.dead

    def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            began = time.monotonic()
            try:
                self.loop(*self.args)
                self.last_error = "returned"
                log.warning("worker %s returned; restarting in %.1f s", self.name, delay)
            except gevent.GreenletExit:
                raise
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("worker %s failed; restarting in %.1f s", self.name, delay)
            if time.monotonic() - began >= HEALTHY_AFTER:
                delay = BACKOFF_MIN
                self.failures = 0
            self.failures += 1
            if self.failures >= WARN_AFTER and not self._warned:
                self._warned = True
                self.supervisor.warnings.append(
                    f"Worker {self.name} keeps failing: {self.last_error}")
            gevent.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            self.restarts += 1

    def stop(self) -> None:
        """Stop the loop for good (no restart)."""
        self.supervisor.workers.pop(self.name, None)
        self.greenlet.kill(block=False)

    def status(self) -> dict[str, Any]:
        """``{"running", "restarts", "failures", "last_error"}``."""
        return {"running": self.running, "restarts": self.restarts,
                "failures": self.failures, "last_error": self.last_error}


class Supervisor:
    """Starts, restarts and stops every worker of one server.

    Args:
        warnings: the list ``server.info`` reports as ``warnings`` (a worker
            that failed ``WARN_AFTER`` times in a row adds one line).
    """

    def __init__(self, warnings: list[str] | None = None) -> None:
        self.warnings = warnings if warnings is not None else []
        self.workers: dict[str, Worker] = {}

    def start(self, name: str, loop: Callable[..., Any], *args: Any) -> Worker:
        """Run ``loop(*args)`` under supervision as worker ``name``.

        Returns: the :class:`Worker`.
        Raises: ValueError when a worker of that name is running.
        """
        old = self.workers.get(name)
        if old is not None and old.running:
            raise ValueError(f"worker {name} is already running")
        worker = Worker(self, name, loop, args)
        self.workers[name] = worker
        return worker

    def stop(self, name: str) -> None:
        """Stop worker ``name`` if it runs."""
        worker = self.workers.get(name)
        if worker is not None:
            worker.stop()

    def stop_all(self) -> None:
        """Stop every worker (server shutdown)."""
        for worker in list(self.workers.values()):
            worker.stop()

    def status(self) -> dict[str, dict[str, Any]]:
        """``{name: Worker.status()}`` for every worker."""
        return {name: w.status() for name, w in sorted(self.workers.items())}

    def inject_fault(self, name: str) -> None:
        """Raise :class:`WorkerFault` inside worker ``name`` (it is then
        restarted as after any failure).

        Raises: KeyError for an unknown worker.
        """
        worker = self.workers[name]
        worker.greenlet.kill(WorkerFault(f"fault injected into {name}"), block=False)
