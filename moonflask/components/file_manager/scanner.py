"""Gcode metadata extraction off the gevent hub, and its cache.

:class:`MetadataScanner` runs ONE worker process
(``python -m moonflask.components.file_manager.scanner``) that imports
``moonflask.components.file_manager.metadata`` once and serves JSON-lines requests on its
stdin/stdout, so a run of scans pays one interpreter start-up and never
uses the server's CPU thread.  The worker starts on demand and exits after
30 s without work, so an idle server holds no second process.  Requests are served by priority (client requests and
uploads before the background start-up scan); a worker that crashes or
exceeds the time limit is killed and restarted.

:class:`MetadataCache` stores each file's metadata in the database namespace
``gcode_metadata`` keyed by the path relative to ``gcodes``; an entry whose
``size``/``modified`` no longer match the file is stale (rescanned).  When
the database component is not loaded it keeps the entries in memory.

Spec: web_api.md "Get GCode Metadata", "Scan GCode Metadata".
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

SCAN_TIMEOUT = 120.0    # seconds per file before the worker is restarted
WORKER_IDLE_EXIT = 30.0  # seconds without work before the worker process exits
PRIO_REQUEST = 0        # uploads, metascan, metadata requests
PRIO_BACKGROUND = 10    # start-up scan, files changed on disk


# -- the worker process ----------------------------------------------------
def worker_main() -> int:
    """Serve requests ``{"id", "op", ...}`` from stdin, one JSON per line:

    - ``{"op": "extract", "path", "root", "check_objects"}`` ->
      ``{"id", "ok": true, "result": metadata}``
    - ``{"op": "unpack_ufp", "path", "dest"}`` -> ``{"id", "ok": true}``

    Errors answer ``{"id", "ok": false, "error": text}``.
    """
    try:
        from moonflask.components.file_manager import metadata as md
    except Exception as err:  # the parser module is missing or broken
        md = None
        import_error = f"metadata module unavailable: {err}"
    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            continue
        reply: dict[str, Any] = {"id": req.get("id")}
        try:
            if md is None:
                raise RuntimeError(import_error)
            if req["op"] == "extract":
                reply["result"] = md.extract_metadata(
                    req["path"], req["root"], check_objects=bool(req.get("check_objects")))
            elif req["op"] == "unpack_ufp":
                md.unpack_ufp(req["path"], req["dest"])
                reply["result"] = None
            else:
                raise ValueError(f"unknown op {req['op']}")
            reply["ok"] = True
        except Exception as err:
            reply["ok"] = False
            reply["error"] = f"{type(err).__name__}: {err}"
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


# -- the server side ---------------------------------------------------------
class ScanError(Exception):
    """Extraction failed (message from the worker)."""


class MetadataScanner:
    """Runs extraction requests in the worker process, one at a time, by
    priority.  All methods are called from greenlets."""

    def __init__(self, workers: Any) -> None:
        import gevent.queue
        self._workers = workers
        self._queue: Any = gevent.queue.PriorityQueue()
        self._seq = itertools.count()
        self._proc: Any = None
        self._pump: Any = None

    def start(self) -> None:
        """Start the dispatching greenlet (the process starts on first use)."""
        if self._pump is None:
            from ...workers import metadata
            self._pump = self._workers.start("metadata", metadata.run, self)

    def stop(self) -> None:
        """Stop dispatching and end the worker process."""
        if self._pump is not None:
            self._pump.stop()
            self._pump = None
        self._kill_proc()

    def _kill_proc(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.kill()
                proc.wait(timeout=2)
            except Exception:
                pass

    def _spawn(self) -> Any:
        from gevent import subprocess as gsub
        env = dict(os.environ)
        import moonflask   # the folder holding the package, wherever the server was started
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(moonflask.__file__)))
        env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = gsub.Popen([sys.executable, "-m", "moonflask.components.file_manager.scanner"],
                                stdin=gsub.PIPE, stdout=gsub.PIPE, stderr=None,
                                env=env, bufsize=0)
        return self._proc

    def serve_next(self) -> None:
        """Wait up to ``WORKER_IDLE_EXIT`` s for a request and run it in the
        metadata process (started on demand; stopped when idle)."""
        import gevent
        import gevent.queue
        try:
            _prio, _seq, req, result = self._queue.get(timeout=WORKER_IDLE_EXIT)
        except gevent.queue.Empty:
            self._kill_proc()  # idle: give its memory back until the next scan
            return
        if result.ready():
            return
        proc = self._proc if self._proc is not None and self._proc.poll() is None \
            else self._spawn()
        try:
            with gevent.Timeout(SCAN_TIMEOUT):
                proc.stdin.write((json.dumps(req) + "\n").encode())
                line = proc.stdout.readline()
            if not line:
                raise ScanError("metadata worker exited")
            reply = json.loads(line)
            if reply.get("ok"):
                result.set(reply.get("result"))
            else:
                result.set_exception(ScanError(reply.get("error", "unknown error")))
        except gevent.Timeout:
            self._kill_proc()
            result.set_exception(ScanError("metadata extraction timed out"))
        except (OSError, ValueError, ScanError) as err:
            self._kill_proc()
            result.set_exception(err if isinstance(err, ScanError) else ScanError(str(err)))
        except Exception as err:   # the worker itself failed: the caller must not wait forever
            self._kill_proc()
            result.set_exception(ScanError(f"metadata worker failed: {err}"))
            raise

    def submit(self, req: dict[str, Any], priority: int = PRIO_REQUEST) -> Any:
        """Queue ``req``; returns a gevent AsyncResult (``.get()`` raises ScanError)."""
        import gevent.event
        result = gevent.event.AsyncResult()
        self._queue.put((priority, next(self._seq), req, result))
        return result

    def extract(self, path: str, root: str, check_objects: bool = False,
                priority: int = PRIO_REQUEST, timeout: float | None = None) -> dict[str, Any]:
        """Metadata of the gcode file ``path`` (``root``: the gcodes folder).

        Raises: ScanError; gevent.Timeout after ``timeout`` seconds."""
        return self.submit({"op": "extract", "path": path, "root": root,
                            "check_objects": check_objects}, priority).get(timeout=timeout)

    def unpack_ufp(self, path: str, dest: str) -> None:
        """Unpack the Ultimaker Format Package ``path`` into the gcode ``dest``."""
        self.submit({"op": "unpack_ufp", "path": path, "dest": dest}).get()


class MetadataCache:
    """Metadata by path relative to ``gcodes``.

    Args:
        server: the Server; the ``database`` component, when loaded, backs
            the cache (namespace ``gcode_metadata``).
    """

    NAMESPACE = "gcode_metadata"
    RECENT_ENTRIES = 256   # decoded database entries kept in memory (most recently used)

    def __init__(self, server: Any) -> None:
        self._mem: dict[str, dict[str, Any]] = {}
        # the namespace is protected (clients cannot write it) and this class
        # is its only writer while the server runs: a decoded copy of the
        # entries last used saves the database read and decode of each
        # server.files.metadata / files.list extended call
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._ns: Any = None
        db = server.components.get("database")
        if db is not None:
            try:
                self._ns = db.namespace(self.NAMESPACE)
            except Exception:
                log.exception("gcode_metadata namespace unavailable; caching in memory")

    @property
    def persistent(self) -> bool:
        """True when entries live in the database."""
        return self._ns is not None

    def get(self, rel: str) -> dict[str, Any] | None:
        """The stored entry for ``rel`` (stale or not), or None."""
        if self._ns is not None:
            recent = self._recent.get(rel)
            if recent is not None:
                self._recent.move_to_end(rel)
                return recent
            try:
                value = self._ns.get(rel, None)
            except Exception:
                log.exception("reading metadata for %s failed", rel)
                return None
            if not isinstance(value, dict):
                return None
            self._remember(rel, value)
            return value
        return self._mem.get(rel)

    def _remember(self, rel: str, md: dict[str, Any]) -> None:
        self._recent[rel] = md
        self._recent.move_to_end(rel)
        if len(self._recent) > self.RECENT_ENTRIES:
            self._recent.popitem(last=False)

    def get_valid(self, rel: str, full: str,
                  st: os.stat_result | None = None) -> dict[str, Any] | None:
        """The entry for ``rel`` when it still describes ``full`` (same size
        and mtime), else None.  ``st``: ``full``'s stat when the caller has it."""
        md = self.get(rel)
        if md is None:
            return None
        if st is None:
            try:
                st = os.stat(full)
            except OSError:
                return None
        if md.get("size") != st.st_size or abs(float(md.get("modified", 0)) - st.st_mtime) > 1e-6:
            return None
        return md

    def insert(self, rel: str, md: dict[str, Any]) -> None:
        """Store ``md`` for ``rel``."""
        if self._ns is not None:
            self._recent.pop(rel, None)
            try:
                self._ns.insert(rel, md)
                self._remember(rel, md)
                return
            except Exception as err:
                from ...api import disk_full_error, is_disk_full   # not in the worker process
                if is_disk_full(err):       # kept in memory; the warning is logged once
                    disk_full_error("gcode metadata")
                else:
                    log.exception("storing metadata for %s failed", rel)
        self._mem[rel] = md

    def delete(self, rel: str) -> None:
        """Forget ``rel`` (no error when absent)."""
        self._recent.pop(rel, None)
        if self._ns is not None:
            try:
                if self._ns.get(rel, None) is not None:
                    self._ns.delete(rel)
            except Exception:
                log.exception("deleting metadata for %s failed", rel)
        self._mem.pop(rel, None)

    def keys(self) -> list[str]:
        """Every stored path."""
        if self._ns is not None:
            try:
                return list(self._ns.keys())
            except Exception:
                log.exception("listing metadata keys failed")
        return list(self._mem)


if __name__ == "__main__":
    sys.exit(worker_main())
