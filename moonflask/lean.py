"""Start-up memory (issue 11, item 2): gevent's patching without the
entry-point scan, ``ssl`` loaded (and patched) on first use, modules that
libraries import at their top but moonflask never uses left unloaded, and
the heap handed back to the system once the server is up.

Figures are the RSS each saves on an idle server (x86-64, CPython 3.11),
measured with ``/proc/PID/status`` before and after the change
(``bench/bench_memory.py``: the idle RSS against Moonraker's).
"""
from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
import types
from typing import Any, Callable


def patch_gevent() -> None:
    """gevent's ``monkey.patch_all()``, as complete (socket, dns, select,
    selectors, thread, threading, os, time, sys, subprocess, signal, queue,
    builtins, contextvars, and ssl), minus two costs:

    - each patch event is announced to zope.event subscribers only, not
      also to setuptools entry-point plugins: finding those reads the
      metadata of every installed distribution through
      ``importlib.metadata`` (zipfile, email, ...: 2.4 MiB), and no plugin
      is installed with moonflask (requirements.txt);
    - ``ssl`` (OpenSSL's libraries: 4.2 MiB) is imported, and patched with
      gevent's cooperative ``SSLSocket``/``SSLContext``, on the first
      attribute access of the module rather than now (``lazy_ssl``).

    Call it first thing, before any other import (``moonflask/__main__.py``)."""
    from gevent import events, monkey
    events.notify_and_call_entry_points = events.notify
    if monkey.is_module_patched("socket"):
        return
    if "ssl" in sys.modules:  # someone imported it already: patch it now, as patch_all does
        monkey.patch_all()
        return
    monkey.patch_all(ssl=False)
    lazy_ssl()


def _patch_ssl(module: types.ModuleType) -> None:
    """``ssl`` has just run: patch it (``monkey.patch_ssl`` imports
    gevent.ssl), unless gevent.ssl's own import is what ran it
    (``_GeventSslFinder`` then patches once gevent.ssl is complete)."""
    if _GeventSslFinder.instance in sys.meta_path:
        sys.meta_path.remove(_GeventSslFinder.instance)
    if _GeventSslFinder.importing:
        return
    from gevent import monkey
    monkey.patch_ssl()


class _GeventSslFinder:
    """While ``ssl`` has not run: an ``import gevent.ssl`` (which runs
    ``ssl`` from its first lines, before it can be used to patch it) gets
    gevent.ssl's own spec with a loader that, once gevent.ssl has run,
    calls gevent's ``patch_ssl``."""

    instance: "_GeventSslFinder | None" = None
    importing = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "gevent.ssl":
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchAfterLoader(spec.loader)
        _GeventSslFinder.importing = True
        return spec


class _PatchAfterLoader:
    """gevent.ssl's loader, then ``monkey.patch_ssl``."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        try:
            self.loader.exec_module(module)
        finally:
            _GeventSslFinder.importing = False
        # patch_ssl finds gevent.ssl as an attribute of gevent, which the
        # import system sets only after this returns
        sys.modules["gevent"].ssl = module  # type: ignore[attr-defined]
        from gevent import monkey
        monkey.patch_ssl()


def lazy_ssl() -> None:
    """Put ``ssl`` in ``sys.modules`` unexecuted (``lazy_module``): ``import
    ssl`` binds it; the first use of one of its names (``ssl.create_default_
    context``, ``from ssl import SSLContext``: paho-mqtt's, requests',
    ldap3's first TLS connection) runs the real module and then gevent's
    ``patch_ssl``, before the name is returned, so every TLS socket is
    gevent's cooperative one (an ``import gevent.ssl`` first does the same).
    No-op when ``ssl`` is already imported."""
    if "ssl" in sys.modules:
        return
    lazy_module("ssl", after=_patch_ssl)
    if "ssl" in sys.modules and "gevent.ssl" not in sys.modules:
        _GeventSslFinder.instance = _GeventSslFinder()
        sys.meta_path.insert(0, _GeventSslFinder.instance)


def lazy_module(name: str, callables: tuple[str, ...] = (),
                after: Callable[[types.ModuleType], None] | None = None) -> None:
    """Put module ``name`` in ``sys.modules`` created but not executed; its
    code runs, in that same module object, on the first access of a name
    it does not have yet (PEP 562's module ``__getattr__``), then ``after``
    (module) runs and the name is returned.  For a module that libraries
    import at their top but moonflask does not use, or not at start.

    ``import name`` and ``import name.sub`` do not run it (the module has
    ``__spec__``, and ``__path__`` for a package; other dunder names are
    not looked up in the unexecuted module).  ``callables`` are function
    names other modules import at their top (``from name import f``): a
    wrapper for each runs the module when called, then calls the real
    function.  No-op when ``name`` is already imported or not installed.
    The first access from a threadpool thread while the hub's thread uses
    the module waits for it to have run (a real lock); an access from the
    module's own code while it runs sees it partial, as in an import cycle."""
    if name in sys.modules:
        return
    spec = _find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    lock = _real_lock()
    state: dict[str, Any] = {"loaded": False, "owner": None}

    def run() -> None:
        if state["loaded"]:
            return
        me = _real_thread_id()
        if state["owner"] == me:
            return
        with lock:
            if state["loaded"]:
                return
            state["owner"] = me
            try:
                module.__dict__.pop("__getattr__", None)
                for func in callables:
                    module.__dict__.pop(func, None)
                spec.loader.exec_module(module)  # type: ignore[union-attr]
                state["loaded"] = True
                if after is not None:
                    after(module)
            finally:
                state["loaded"] = True
                state["owner"] = None

    def load(attr: str) -> Any:
        if attr.startswith("__") and attr not in ("__all__", "__version__"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        run()
        return getattr(module, attr)

    def wrapper(func: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            run()
            return getattr(module, func)(*args, **kwargs)
        call.__name__ = func
        call.__doc__ = f"{name}.{func}, run on the first call."
        return call

    for func in callables:
        setattr(module, func, wrapper(func))
    module.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def _real_lock() -> Any:
    """A lock of the OS threads (not gevent's, once patched)."""
    if "gevent.monkey" in sys.modules:
        from gevent import monkey
        return monkey.get_original("_thread", "allocate_lock")()
    import _thread
    return _thread.allocate_lock()


def _real_thread_id() -> int:
    """The OS thread's id (gevent's patched get_ident is the greenlet's)."""
    from gevent import monkey
    return monkey.get_original("_thread", "get_ident")()


def _find_spec(name: str) -> Any:
    """``name``'s module spec, without importing its parent packages."""
    parent, _, _ = name.rpartition(".")
    if not parent or parent in sys.modules:
        return importlib.util.find_spec(name)
    parent_spec = _find_spec(parent)
    if parent_spec is None or not parent_spec.submodule_search_locations:
        return None
    from importlib.machinery import PathFinder
    return PathFinder.find_spec(name, parent_spec.submodule_search_locations)


def defer_unused_imports() -> None:
    """What the libraries loaded at start import at their top and
    moonflask never calls (``lazy_module``):

    - ``asyncio`` (2.1 MiB): simple_websocket's asyncio server, imported by
      ``simple_websocket/__init__``;
    - ``werkzeug.serving`` (its http.server, socketserver, and ``ssl`` which
      it touches at import): werkzeug's development server, imported by
      ``werkzeug/__init__`` (``run_simple``) and flask
      (``is_running_from_reloader``), used by ``flask run`` only;
    - ``importlib.metadata`` (zipfile, email...): flask.cli's ``--version``;
    - ``hashlib``, ``hmac``, ``secrets`` (OpenSSL's libcrypto through
      ``_hashlib``: 3.4 MiB): imported by werkzeug, flask, itsdangerous,
      jinja2 and moonflask's authorization at their top, used by a login,
      a token check, an upload's checksum.  ``from hashlib import sha1``
      (werkzeug.http's ETags, jinja2's cache keys) binds a wrapper that
      runs hashlib when called.

    Call before importing flask."""
    lazy_module("asyncio")
    # the names libraries loaded at start import from them at their top
    lazy_module("hashlib", ("sha1",))      # werkzeug.http, jinja2.loaders/bccache
    lazy_module("hmac", ("compare_digest",))  # secrets
    lazy_module("secrets")
    lazy_module("importlib.metadata")
    lazy_module("werkzeug.serving", ("run_simple", "is_running_from_reloader"))


def settle(freeze: bool = False) -> None:
    """Collect, and return the free heap to the system (``malloc_trim``:
    1 to 2 MiB after start-up).  ``freeze``: also move what survived to
    the permanent generation (``gc.freeze``: the collector no longer walks
    those objects; done once, after start-up)."""
    gc.collect()
    if freeze:
        gc.freeze()
    malloc_trim()


def settle_later(delay: float = 2.0) -> None:
    """``settle`` (with ``freeze``) ``delay`` seconds from now, in a greenlet."""
    import gevent
    gevent.spawn_later(delay, settle, True)


def settle_after_start(events: Any, delay: float = 2.0) -> None:
    """``settle`` ``delay`` seconds after start-up (with ``freeze``), and
    again each time Klippy becomes ready (its first status, the start-up
    file scans and database reads are transient).

    Args:
        events: the server's event bus (``moonflask.notify``), for
            ``klippy:ready``."""
    import gevent
    settle_later(delay)
    events.on("klippy:ready", lambda *_: gevent.spawn_later(delay, settle))


def malloc_trim() -> None:
    """glibc's ``malloc_trim(0)``: give back to the system the free pages
    of every malloc arena (after start-up, after a big transient job).  A
    no-op where glibc (or ctypes) is missing."""
    global _trim
    if _trim is None:
        try:
            import ctypes
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (ImportError, OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim: Any = None
