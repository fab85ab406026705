"""Real services the tests start and stop: a supervisord with dummy programs,
and a session ``dbus-daemon`` with a stand-in service (systemd, PackageKit)
on it.  Shared by the machine, power and update-manager tests."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str | None:
    """The venv's ``name`` (supervisor comes from PyPI), else the one on PATH."""
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


SUPERVISORD = tool("supervisord")
SUPERVISORCTL = tool("supervisorctl")
DBUS_DAEMON = shutil.which("dbus-daemon")

_SUPERVISOR_CONF = """\
[unix_http_server]
file={dir}/supervisor.sock

[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock
"""


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, SIGKILL after ``timeout`` seconds; waits for it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ctl_status(conf: str) -> dict[str, tuple[str, int | None]]:
    """``supervisorctl status``: ``{program: (state, pid or None)}``."""
    out = subprocess.run([SUPERVISORCTL, "-c", conf, "status"], capture_output=True,
                         text=True).stdout
    res = {}
    for line in out.splitlines():
        parts = line.split()
        pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
        res[parts[0]] = (parts[1], pid)
    return res


def write_supervisor_conf(sdir: str, programs: dict[str, str]) -> str:
    """Write ``SDIR/supervisord.conf`` running ``programs`` (name -> option
    lines; without a ``command=`` line the program is a ``sleep`` that counts
    as started at once); returns its path."""
    os.makedirs(sdir, exist_ok=True)
    conf = os.path.join(sdir, "supervisord.conf")
    text = _SUPERVISOR_CONF.format(dir=sdir)
    for name, options in programs.items():
        if "command=" not in options:
            options = "command=/bin/sleep 100000\nstartsecs=0\n" + options
        text += f"\n[program:{name}]\n{options}"
    with open(conf, "w") as fh:
        fh.write(text)
    return conf


def start_supervisord(conf: str) -> subprocess.Popen:
    """Start supervisord on ``conf`` (stop it with :func:`stop_process`)."""
    return subprocess.Popen([SUPERVISORD, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@contextmanager
def supervisord(sdir: str, programs: dict[str, str]) -> Iterator[str]:
    """Run a supervisord in ``sdir`` with ``programs`` (as
    :func:`write_supervisor_conf`); yields its config path once every program
    is RUNNING (15 s at most, else the test fails), stops it afterwards."""
    conf = write_supervisor_conf(sdir, programs)
    proc = start_supervisord(conf)
    try:
        deadline = time.monotonic() + 15
        while True:
            st = ctl_status(conf)
            if len(st) == len(programs) and all(v[0] == "RUNNING" for v in st.values()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"supervisord did not start its programs: {st}")
            time.sleep(0.1)
        yield conf
    finally:
        stop_process(proc)


@contextmanager
def venv_first_on_path() -> Iterator[None]:
    """PATH with the venv's bin first (its supervisorctl), for a server start."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = BIN + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


@contextmanager
def dbus_with_standin(bdir: str, script: str, what: str) -> Iterator[tuple[str, str]]:
    """A session ``dbus-daemon`` at ``unix:path=BDIR/bus`` and, on it,
    ``python SCRIPT STATE_FILE`` (a stand-in service that writes its state
    file once it owns its name).  Yields ``(bus address, state file)``;
    stops both afterwards and removes ``bdir``.  ``what`` names the stand-in
    in the failure when it does not start within 10 s."""
    os.makedirs(bdir, exist_ok=True)
    address = f"unix:path={bdir}/bus"
    daemon = subprocess.Popen([DBUS_DAEMON, "--session", "--nofork", "--nopidfile",
                               f"--address={address}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [daemon]
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(f"{bdir}/bus") and time.monotonic() < deadline:
            time.sleep(0.05)
        state = os.path.join(bdir, "standin.json")
        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address)
        procs.insert(0, subprocess.Popen([sys.executable, script, state], env=env))
        while not os.path.exists(state) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(state), f"{what} did not start"
        yield address, state
    finally:
        for proc in procs:
            stop_process(proc, 5)
        shutil.rmtree(bdir, ignore_errors=True)
