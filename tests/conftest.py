"""Shared fixtures: the simulated printer and moonflask servers, all real
processes on real sockets (see helpers.py)."""
from __future__ import annotations

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import Moonflask, Printer  # noqa: E402


@pytest.fixture(scope="session")
def tmp_root():
    """A short temporary root (unix socket paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mf-") as path:
        yield path


@pytest.fixture(scope="module")
def printer_data(tmp_root, request):
    """A fresh printer_data folder for the module."""
    path = os.path.join(tmp_root, request.module.__name__.rsplit(".", 1)[-1][:40])
    os.makedirs(os.path.join(path, "gcodes"), exist_ok=True)
    return path


@pytest.fixture(scope="module")
def printer(printer_data):
    """The simulated printer, ready, for the module."""
    p = Printer(os.path.join(printer_data, "klippy"), os.path.join(printer_data, "gcodes"))
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def start_server(printer_data, printer):
    """Factory: ``start_server(config="...", server_options="...", args=[...])``
    starts a moonflask on the module's printer_data and Klippy; every server
    started is stopped at module end."""
    started: list[Moonflask] = []

    def factory(config: str = "", server_options: str = "", args: list[str] | None = None,
                data_path: str | None = None, wait_ready: bool = True) -> Moonflask:
        srv = Moonflask(data_path or printer_data, printer.socket_path, config,
                        server_options, args)
        started.append(srv)
        srv.start()
        if wait_ready:
            srv.wait_klippy_state("ready")
        return srv

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def server(start_server):
    """A moonflask with the default configuration, Klippy ready."""
    return start_server()
