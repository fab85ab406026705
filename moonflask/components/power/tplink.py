"""``type: tplink_smartplug``: TP-Link Kasa plugs and power strips over their
local TCP protocol.  Spec: configuration.md "TPLink Smartplug Configuration".

Each request is one TCP connection to ``address:port`` (9999): a JSON
command framed as a 4-byte big-endian length followed by the text
"encrypted" with the XOR autokey cipher (key 171, each ciphertext byte is
the next key); the reply is framed the same way.  A strip outlet
(``output_id``) is addressed with ``context.child_ids`` = the deviceId
followed by the two-digit outlet index.
"""
from __future__ import annotations

import json
import socket
import struct
from typing import Any

from .device import REQUEST_TIMEOUT, DeviceError, PowerDevice

INITIAL_KEY = 171


def encrypt(text: str) -> bytes:
    """Frame and encrypt ``text`` (length prefix included)."""
    key = INITIAL_KEY
    out = bytearray()
    for byte in text.encode():
        key ^= byte
        out.append(key)
    return struct.pack(">I", len(out)) + bytes(out)


def decrypt(data: bytes) -> str:
    """Decrypt a reply payload (without its length prefix)."""
    key = INITIAL_KEY
    out = bytearray()
    for byte in data:
        out.append(key ^ byte)
        key = byte
    return out.decode("utf-8", "replace")


class TPLinkSmartPlug(PowerDevice):
    """Config: ``address`` (required), ``port`` (9999), ``output_id`` (strip
    outlet, default none), ``timer``, ``poll_interval``."""

    type = "tplink_smartplug"
    has_timer = True

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.address = section.get("address")
        self.port = section.getint("port", 9999)
        self.output_id = section.getint("output_id", None)
        self._device_id: str | None = None

    def _exchange(self, cmd: dict[str, Any]) -> dict[str, Any]:
        where = f"{self.address}:{self.port}"
        try:
            with socket.create_connection((self.address, self.port),
                                          timeout=REQUEST_TIMEOUT) as sock:
                sock.sendall(encrypt(json.dumps(cmd)))
                head = self._recv(sock, 4)
                length = struct.unpack(">I", head)[0]
                if length > 1 << 20:
                    raise DeviceError(f"oversized reply from {where}")
                reply = json.loads(decrypt(self._recv(sock, length)))
        except socket.timeout:
            raise DeviceError(f"request to {where} timed out after "
                              f"{REQUEST_TIMEOUT:g} s") from None
        except ConnectionRefusedError:
            raise DeviceError(f"connection refused: {where}") from None
        except OSError as err:
            raise DeviceError(f"cannot reach {where}: {err.strerror or err}") from None
        except ValueError:
            raise DeviceError(f"invalid reply from {where}") from None
        if not isinstance(reply, dict):
            raise DeviceError(f"invalid reply from {where}")
        return reply

    @staticmethod
    def _recv(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise OSError("connection closed by the device")
            buf += chunk
        return buf

    def _sysinfo(self) -> dict[str, Any]:
        reply = self._exchange({"system": {"get_sysinfo": {}}})
        info = reply.get("system", {}).get("get_sysinfo")
        if not isinstance(info, dict):
            raise DeviceError(f"unexpected reply: {json.dumps(reply)[:200]}")
        self._device_id = info.get("deviceId", self._device_id)
        return info

    def _child_id(self) -> str:
        if self._device_id is None:
            self._sysinfo()
        if not self._device_id:
            raise DeviceError("the device reports no deviceId")
        return f"{self._device_id}{self.output_id:02d}"

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        info = self._sysinfo()
        if self.output_id is None:
            return bool(info.get("relay_state"))
        child = self._child_id()
        for item in info.get("children") or []:
            if item.get("id") in (child, child[-2:]):
                return bool(item.get("state"))
        raise DeviceError(f"the device has no outlet {self.output_id}")

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        cmd: dict[str, Any] = {"system": {"set_relay_state": {"state": int(on)}}}
        if self.output_id is not None:
            cmd = {"context": {"child_ids": [self._child_id()]}, **cmd}
        reply = self._exchange(cmd)
        err = reply.get("system", {}).get("set_relay_state", {}).get("err_code", -1)
        if err != 0:
            raise DeviceError(f"the device refused the command (err_code {err})")
        return on
