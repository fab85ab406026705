"""A real mosquitto broker and a paho-mqtt test client, for the MQTT tests and
``scripts/capture_mqtt_reference.py``.

:class:`Broker` writes its own ``mosquitto.conf`` in a work folder: a plain
listener and a TLS listener (a CA and a server certificate for 127.0.0.1 made
with ``openssl``), both requiring the user ``USERNAME``/``PASSWORD`` from a
password file made with ``mosquitto_passwd``.  It can be stopped, killed and
restarted on the same ports.  :class:`Client` is a paho-mqtt 2.x client
running its own network thread, collecting every message it receives.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

USERNAME = "moontest"
PASSWORD = "s3cret-pw"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def available() -> bool:
    """True when mosquitto, mosquitto_passwd and openssl are installed."""
    return all(os.path.exists(p) for p in (MOSQUITTO, MOSQUITTO_PASSWD)) and bool(
        shutil.which("openssl"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str, cwd: str) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def make_certificates(folder: str) -> dict[str, str]:
    """A CA and a server certificate (CN/SAN 127.0.0.1, localhost) signed by it.

    Returns: ``{"ca": path, "cert": path, "key": path}``.
    """
    os.makedirs(folder, exist_ok=True)
    ext = os.path.join(folder, "san.ext")
    with open(ext, "w") as fh:
        fh.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=moonflask test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", "server.key", "-out", "server.csr", cwd=folder)
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
         cwd=folder)
    return {"ca": os.path.join(folder, "ca.crt"), "cert": os.path.join(folder, "server.crt"),
            "key": os.path.join(folder, "server.key")}


class Broker:
    """A mosquitto process with a password listener and a TLS listener.

    Args:
        workdir: folder for mosquitto.conf, the password file, certificates, log.
    Attributes:
        port: the plain listener; tls_port: the TLS listener; ca: the CA file.
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = _free_port()
        self.tls_port = _free_port()
        certs = make_certificates(os.path.join(workdir, "certs"))
        self.ca = certs["ca"]
        self.passwd = os.path.join(workdir, "passwd")
        _run(MOSQUITTO_PASSWD, "-b", "-c", self.passwd, USERNAME, PASSWORD, cwd=workdir)
        os.chmod(self.passwd, 0o600)
        self.conf = os.path.join(workdir, "mosquitto.conf")
        with open(self.conf, "w") as fh:
            # As root, mosquitto would switch to the user "mosquitto", who cannot
            # read this private folder: stay the user that started it.
            user = "user root\n" if os.geteuid() == 0 else ""
            fh.write(f"""{user}per_listener_settings false
allow_anonymous false
password_file {self.passwd}
persistence false
log_dest file {os.path.join(workdir, "mosquitto.log")}
log_type error
log_type warning
log_type notice
listener {self.port} 127.0.0.1
listener {self.tls_port} 127.0.0.1
cafile {certs["ca"]}
certfile {certs["cert"]}
keyfile {certs["key"]}
""")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "Broker":
        """Start mosquitto and wait until both listeners accept connections."""
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        for port in (self.port, self.tls_port):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("mosquitto exited: see " + self.workdir)
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("mosquitto did not listen") from None
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Terminate mosquitto (SIGKILL after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Client:
    """A paho-mqtt 2.x test client with its own network thread.

    Args:
        port: the broker port; tls_ca: the CA file to connect with TLS.
        protocol: ``mqtt.MQTTv311`` (default) or ``mqtt.MQTTv5``.
    Attributes:
        messages: a queue of ``(topic, payload bytes, retain, properties)``.
    """

    def __init__(self, port: int, tls_ca: str | None = None,
                 protocol: int = mqtt.MQTTv311, username: str = USERNAME,
                 password: str = PASSWORD) -> None:
        self.messages: "queue.Queue[tuple[str, bytes, bool, Any]]" = queue.Queue()
        self.protocol = protocol
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self._connected = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        self.client.on_connect = lambda c, u, f, rc, p=None: self._connected.set()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("test client could not connect")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.messages.put((msg.topic, bytes(msg.payload), bool(msg.retain),
                           getattr(msg, "properties", None)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any = None) -> None:
        ev = self._subacks.setdefault(mid, threading.Event())
        ev.set()

    def subscribe(self, topic: str, qos: int = 0) -> None:
        """Subscribe and wait for the broker's SUBACK."""
        _rc, mid = self.client.subscribe(topic, qos)
        ev = self._subacks.setdefault(mid, threading.Event())
        if not ev.wait(10):
            raise TimeoutError(f"no SUBACK for {topic}")

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False,
                properties: Any = None) -> None:
        """Publish (dicts/lists JSON encoded) and wait until it left."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(10)

    def wait(self, topic: str, timeout: float = 15.0,
             predicate: Callable[[Any], bool] | None = None) -> tuple[Any, bool, Any]:
        """The next message on ``topic`` whose decoded payload satisfies
        ``predicate`` (messages on other topics are dropped).

        Returns: ``(payload (JSON-decoded when possible), retain, properties)``.
        Raises: TimeoutError.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message on {topic} within {timeout}s")
            try:
                got_topic, raw, retain, props = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if not mqtt.topic_matches_sub(topic, got_topic):
                continue
            payload = decode(raw)
            if predicate is None or predicate(payload):
                return payload, retain, props

    def drain(self) -> list[tuple[str, Any, bool]]:
        """Every message received so far: ``(topic, decoded payload, retain)``."""
        out = []
        while True:
            try:
                topic, raw, retain, _props = self.messages.get_nowait()
            except queue.Empty:
                return out
            out.append((topic, decode(raw), retain))

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def decode(raw: bytes) -> Any:
    """A payload as JSON when it parses, else as text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


PUBLISH_MACRO = """
[gcode_macro PUBLISH_ALERT]
gcode:
  {% set data = params.PAYLOAD|default(None) %}
  {action_call_remote_method("publish_mqtt_topic",
                             topic="klipper/alert",
                             payload=data,
                             qos=0,
                             retain=False,
                             use_prefix=True)}
"""


def printer_shared_dir(folder: str, shared: str) -> str:
    """A copy of the simulated printer's shared folder whose printer.cfg also
    has the ``PUBLISH_ALERT`` macro of configuration.md "Publishing topics
    from Klipper"; point ``MOONFLASK_SHARED`` at the returned folder.

    Args:
        folder: where to make the copy; shared: the original shared folder.
    """
    klipper = os.path.join(folder, "klipper")
    os.makedirs(klipper, exist_ok=True)
    src = os.path.join(shared, "klipper")
    shutil.copyfile(os.path.join(src, "klipper.dict"), os.path.join(klipper, "klipper.dict"))
    with open(os.path.join(src, "printer.cfg")) as fh:
        cfg = fh.read()
    with open(os.path.join(klipper, "printer.cfg"), "w") as fh:
        fh.write(cfg + "\n" + PUBLISH_MACRO)
    return folder
