"""WLED strips from ``[wled NAME]`` sections (Moonraker's ``wled``
component).  Spec: configuration.md "[wled]"; web_api.md "WLED APIs"; the
``set_wled`` and ``set_wled_state`` Klippy remote methods.

Every strip speaks WLED's JSON API (``{"on", "bri", "ps", "tt", "seg":
{"bri", "ix", "sx", "i": [start, stop, [r, g, b, w]]}}``): ``type: http``
posts it to ``http://ADDRESS[:PORT]/json``; ``type: serial`` writes it to
the serial line (WLED 0.13+ reads JSON objects there and answers
``{"v": true}`` with its state).  At startup each strip's state is read;
``on`` applies its ``initial_preset`` or its initial colours.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import gevent
import gevent.lock
import gevent.socket
import requests

from ..api import ApiError
from ..config import ConfigError

log = logging.getLogger(__name__)

NOT_FOUND = "strip_not_found"
ACTIONS = ("on", "off", "toggle", "control")


class StripError(Exception):
    """The strip could not be reached; the message says why."""


class Strip:
    """One strip: its last known state and the commands that change it.

    Args:
        server: the :class:`moonflask.app.Server`.
        section: the ``[wled NAME]`` config section.
    Raises:
        ConfigError: an option is invalid.
    """

    def __init__(self, server: Any, section: Any) -> None:
        self.server = server
        self.name = section.name.split(None, 1)[1].strip()
        self.kind = section.get("type")
        self.chain_count = section.getint("chain_count", 1, minval=1)
        self.initial_preset = section.getint("initial_preset", -1)
        self.initial = [section.getfloat(f"initial_{c}", 0.5, minval=0.0, maxval=1.0)
                        for c in ("red", "green", "blue", "white")]
        section.get("color_order", "")   # deprecated: the order is set in WLED itself
        self.timeout = section.getfloat("timeout", 2.0, minval=0.1)
        self.on = False
        self.preset = -1
        self.brightness = -1
        self.intensity = -1
        self.speed = -1
        self.error: str | None = None
        self.lock = gevent.lock.Semaphore()
        self._pending: dict[int, list[int]] = {}
        if self.kind not in ("http", "serial"):
            raise ConfigError(f"[{section.name}]: type must be 'http' or 'serial', "
                              f"not '{self.kind}'")

    # -- transport -----------------------------------------------------------
    def send(self, obj: dict[str, Any], want_reply: bool = False) -> Any:
        """Send one JSON API object; returns WLED's reply when ``want_reply``.
        Raises StripError."""
        raise NotImplementedError

    # -- state ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The web_api.md strip object: ``{"strip", "status", "chain_count",
        "preset", "brightness", "intensity", "speed", "error"}``."""
        return {"strip": self.name, "status": "on" if self.on else "off",
                "chain_count": self.chain_count, "preset": self.preset,
                "brightness": self.brightness, "intensity": self.intensity,
                "speed": self.speed, "error": self.error}

    def _command(self, obj: dict[str, Any]) -> None:
        try:
            self.send(obj)
        except StripError as err:
            self.error = str(err)
            log.warning("WLED %s: %s", self.name, err)
            raise ApiError(f"WLED {self.name}: {err}", 400) from None
        self.error = None

    def _color_body(self, colors: list[list[int]] | None = None) -> dict[str, Any]:
        color = [round(c * 255) for c in self.initial]
        seg: dict[str, Any] = {"bri": 255, "i": [0, self.chain_count, color]}
        if colors is not None:
            seg["i"] = colors
        return {"on": True, "tt": 0, "bri": 255, "seg": seg}

    def initialize(self) -> None:
        """Read the strip's state (``{"v": true}``), as the reference does at
        startup (the initial preset or colours apply when it is turned on);
        a failure is kept in ``error``."""
        with self.lock:
            try:
                state = self.send({"v": True}, want_reply=True)
            except StripError as err:
                self.error = str(err)
                log.warning("WLED %s: %s", self.name, err)
                return
            if isinstance(state, dict) and "on" in state:
                self.on = bool(state["on"])

    def turn_on(self, preset: int = -1, brightness: int = -1, intensity: int = -1,
                speed: int = -1) -> dict[str, Any]:
        """On with ``preset`` (or the initial preset, else the initial
        colours at full brightness), then brightness/intensity/speed."""
        with self.lock:
            if preset < 0:
                preset = self.initial_preset
            if preset >= 0:
                self._command({"on": True, "ps": preset})
                self.preset = preset
            else:
                self._command(self._color_body())
                self.preset, self.brightness = -1, 255
                self.intensity = self.speed = -1
            self.on = True
        if brightness >= 0 or intensity >= 0 or speed >= 0:
            return self.control(brightness, intensity, speed)
        return self.status()

    def turn_off(self) -> dict[str, Any]:
        """Off (the other settings are kept)."""
        with self.lock:
            self._command({"on": False})
            self.on = False
        return self.status()

    def toggle(self) -> dict[str, Any]:
        """Off when on, else on as :meth:`turn_on`."""
        return self.turn_off() if self.on else self.turn_on()

    def control(self, brightness: int = -1, intensity: int = -1,
                speed: int = -1) -> dict[str, Any]:
        """Change brightness (1-255), intensity and speed (0-255) of the
        active segment; values below 0 are left alone."""
        seg: dict[str, Any] = {}
        if brightness >= 0:
            seg["bri"] = brightness
        if intensity >= 0:
            seg["ix"] = intensity
        if speed >= 0:
            seg["sx"] = speed
        if not seg:
            return self.status()
        body: dict[str, Any] = {"tt": 0, "seg": seg}
        if brightness >= 0:
            body["bri"] = brightness
        with self.lock:
            self._command(body)
            if brightness >= 0:
                self.brightness = brightness
            if intensity >= 0:
                self.intensity = intensity
            if speed >= 0:
                self.speed = speed
        return self.status()

    def set_leds(self, color: list[float], index: int, transmit: bool) -> None:
        """``set_wled``: colour LED ``index`` (1-based; -1: every LED) and,
        when ``transmit``, send every LED set since the last transmission."""
        rgbw = [max(0, min(255, round(c * 255))) for c in color]
        if index < 0:
            self._pending = {i: rgbw for i in range(self.chain_count)}
        elif 1 <= index <= self.chain_count:
            self._pending[index - 1] = rgbw
        else:
            raise ApiError(f"WLED {self.name}: index {index} out of range "
                           f"1-{self.chain_count}", 400)
        if not transmit:
            return
        pending, self._pending = self._pending, {}
        if len(pending) == self.chain_count and len({tuple(c) for c in pending.values()}) == 1:
            leds: list[Any] = [0, self.chain_count, next(iter(pending.values()))]
        else:
            leds = []
            for i in sorted(pending):
                leds += [i, pending[i]]
        with self.lock:
            self._command(self._color_body(leds))
            self.on, self.preset, self.brightness = True, -1, 255

    def close(self) -> None:
        """Release the transport."""


class HttpStrip(Strip):
    """``type: http``: ``address`` (required), ``port`` (80), ``protocol``
    (``http``), ``timeout`` (2 s)."""

    def __init__(self, server: Any, section: Any) -> None:
        super().__init__(server, section)
        self.address = section.get("address")
        self.port = section.getint("port", 80)
        self.protocol = section.get("protocol", "http")
        self.url = f"{self.protocol}://{self.address}:{self.port}/json"

    def send(self, obj: dict[str, Any], want_reply: bool = False) -> Any:
        try:
            resp = requests.post(self.url, json=obj, timeout=self.timeout)
        except requests.Timeout:
            raise StripError(f"request to {self.url} timed out after {self.timeout:g} s") \
                from None
        except requests.RequestException:
            raise StripError(f"cannot connect to {self.url}") from None
        if resp.status_code >= 400:
            raise StripError(f"HTTP {resp.status_code} from {self.url}")
        try:
            return resp.json()
        except ValueError:
            raise StripError(f"invalid JSON from {self.url}") from None


class SerialStrip(Strip):
    """``type: serial``: ``serial`` (the port, required), ``baud`` (115200).
    The port is opened on first use and reopened after an error."""

    def __init__(self, server: Any, section: Any) -> None:
        super().__init__(server, section)
        self.port_path = section.get("serial")
        self.baud = section.getint("baud", 115200, minval=1)
        self._ser: Any = None

    def _open(self) -> Any:
        import serial
        if self._ser is None:
            try:
                self._ser = serial.Serial(self.port_path, self.baud, timeout=0,
                                          write_timeout=self.timeout)
            except (serial.SerialException, OSError) as err:
                raise StripError(f"cannot open {self.port_path}: {err}") from None
        return self._ser

    def send(self, obj: dict[str, Any], want_reply: bool = False) -> Any:
        import serial
        ser = self._open()
        try:
            ser.reset_input_buffer()
            ser.write(json.dumps(obj, separators=(",", ":")).encode())
            ser.flush()
            if want_reply:
                return self._read_reply(ser)
        except (serial.SerialException, OSError) as err:
            self.close()
            raise StripError(f"serial {self.port_path}: {err}") from None
        return None

    def _read_reply(self, ser: Any) -> Any:
        buf = b""
        depth = 0
        started = False
        with gevent.Timeout(self.timeout, False):
            while True:
                gevent.socket.wait_read(ser.fileno())
                for byte in ser.read(4096):
                    ch = bytes([byte])
                    if ch == b"{":
                        depth += 1
                        started = True
                    if started:
                        buf += ch
                    if ch == b"}" and started:
                        depth -= 1
                        if depth == 0:
                            try:
                                return json.loads(buf)
                            except ValueError:
                                buf, started = b"", False
        raise StripError(f"no reply on {self.port_path} within {self.timeout:g} s")

    def close(self) -> None:
        if self._ser is not None:
            try:
                self._ser.close()
            except OSError:
                pass
            self._ser = None


class Wled:
    """The wled component: every strip, in configuration order.

    Args:
        server: the :class:`moonflask.app.Server`.
    Raises:
        ConfigError: a ``[wled NAME]`` section is invalid.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.strips: dict[str, Strip] = {}
        for name in server.config.prefix_sections("wled "):
            section = server.config.section(name)
            cls = SerialStrip if section.get("type", "") == "serial" else HttpStrip
            strip = cls(server, section)
            self.strips[strip.name] = strip
        server.events.on("server:started", self._on_started)
        server.events.on("server:shutdown", self._on_shutdown)
        server.klippy.register_remote_method("set_wled", self._remote_set_wled)
        server.klippy.register_remote_method("set_wled_state", self._remote_set_wled_state)

    def _on_started(self) -> None:
        for strip in self.strips.values():
            gevent.spawn(strip.initialize)

    def _on_shutdown(self) -> None:
        for strip in self.strips.values():
            strip.close()

    def get_strip(self, name: str) -> Strip:
        """The strip ``name``.  Raises ApiError 400 ``No valid strip named NAME``."""
        strip = self.strips.get(name)
        if strip is None:
            raise ApiError(f"No valid strip named {name}", 400)
        return strip

    def all_status(self) -> dict[str, Any]:
        """``{name: status}`` of every strip."""
        return {name: s.status() for name, s in self.strips.items()}

    def batch(self, names: list[str], action: str) -> dict[str, Any]:
        """``status``/``on``/``off``/``toggle`` for each named strip; an
        unknown one is ``{"error": "strip_not_found"}``, one that fails
        reports its ``error``.  Raises ApiError 400 for no names."""
        if not names:
            raise ApiError("No arguments provided", 400)
        out: dict[str, Any] = {}
        for name in names:
            strip = self.strips.get(name)
            if strip is None:
                out[name] = {"error": NOT_FOUND}
                continue
            try:
                if action == "on":
                    strip.turn_on()
                elif action == "off":
                    strip.turn_off()
                elif action == "toggle":
                    strip.toggle()
            except ApiError:
                pass
            out[name] = strip.status()
        return out

    def strip_action(self, name: str, action: str, preset: int = -1, brightness: int = -1,
                     intensity: int = -1, speed: int = -1) -> dict[str, Any]:
        """``machine.wled.post_strip``: ``on`` (optionally a preset and
        brightness/intensity/speed), ``off``, ``toggle`` or ``control``.

        Raises: ApiError 400 for an unknown strip or action, a value out of
        range (brightness 1-255, intensity and speed 0-255), a strip that
        cannot be reached.
        """
        strip = self.get_strip(name)
        if action not in ACTIONS:
            raise ApiError(f"Invalid requested action '{action}'", 400)
        for arg, value, low in (("brightness", brightness, 1), ("intensity", intensity, 0),
                                ("speed", speed, 0)):
            if value != -1 and not low <= value <= 255:
                raise ApiError(f"Argument '{arg}' must be between {low} and 255, "
                               f"not {value}", 400)
        if action == "on":
            status = strip.turn_on(preset, brightness, intensity, speed)
        elif action == "off":
            status = strip.turn_off()
        elif action == "toggle":
            status = strip.toggle()
        else:
            status = strip.control(brightness, intensity, speed)
        return {name: status}

    # -- Klippy remote methods ---------------------------------------------------
    def _remote_set_wled(self, strip: str = "", red: float = 0.0, green: float = 0.0,
                         blue: float = 0.0, white: float = 0.0, index: int = -1,
                         transmit: int = 1, **_kw: Any) -> None:
        try:
            self.get_strip(strip).set_leds([float(red), float(green), float(blue),
                                            float(white)], int(index), bool(transmit))
        except (ApiError, ValueError, TypeError) as err:
            log.warning("set_wled %s: %s", strip, getattr(err, "message", err))

    def _remote_set_wled_state(self, strip: str = "", state: Any = None, preset: int = -1,
                               brightness: int = -1, intensity: int = -1, speed: int = -1,
                               **_kw: Any) -> None:
        try:
            if state is None:
                action = "control"
            else:
                action = "on" if state else "off"
            self.strip_action(strip, action, int(preset), int(brightness), int(intensity),
                              int(speed))
        except (ApiError, ValueError, TypeError) as err:
            log.warning("set_wled_state %s: %s", strip, getattr(err, "message", err))


def load_component(server: Any, _section: Any) -> Wled:
    """Create the wled component from every ``[wled NAME]`` section."""
    return Wled(server)


