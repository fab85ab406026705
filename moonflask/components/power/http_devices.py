"""Power devices reached over HTTP: ``tasmota``, ``shelly``, ``homeseer``,
``homeassistant``, ``loxonev1``, ``smartthings``, ``hue`` and the generic
``http`` type.  Spec: configuration.md "Tasmota Configuration", "Shelly
Configuration", "Homeseer Configuration", "Home Assistant Configuration
(HTTP)", "Loxone Device Configuration", "SmartThings (HTTP)", "Hue Device
Configuration", "Generic HTTP Devices".

Every type takes ``address``, ``port`` (default: the protocol's) and
``protocol`` (``http``), as the reference does, so a device can be any
host and port.  Requests are bounded by ``REQUEST_TIMEOUT``; a refused
connection, a timeout, an HTTP error or an unexpected body is a
:class:`DeviceError` whose message never carries credentials.
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import gevent
import requests

from ...config import ConfigError
from ..template import Template, TemplateError, get_template
from .device import REQUEST_TIMEOUT, DeviceError, PowerDevice

log = logging.getLogger(__name__)


def _strip_query(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def http_call(method: str, url: str, **kw: Any) -> requests.Response:
    """One HTTP request bounded by REQUEST_TIMEOUT.

    Returns: the response (any status).
    Raises: DeviceError for a refused connection, a timeout or a bad URL.
    """
    where = _strip_query(url)
    try:
        return requests.request(method, url, timeout=REQUEST_TIMEOUT, **kw)
    except requests.Timeout:
        raise DeviceError(f"request to {where} timed out after {REQUEST_TIMEOUT:g} s") from None
    except requests.ConnectionError as err:
        reason = "connection refused" if "refused" in str(err).lower() else "cannot connect"
        raise DeviceError(f"{reason}: {where}") from None
    except requests.RequestException as err:
        raise DeviceError(f"request to {where} failed: {type(err).__name__}") from None


def _json(resp: requests.Response) -> Any:
    where = _strip_query(resp.url)
    if resp.status_code >= 400:
        raise DeviceError(f"HTTP {resp.status_code} from {where}")
    try:
        return resp.json()
    except ValueError:
        raise DeviceError(f"invalid JSON from {where}") from None


class HttpDevice(PowerDevice):
    """Common options: ``address`` (required), ``port``, ``protocol``,
    ``user``, ``password`` (the subclass gives their defaults)."""

    default_user = ""
    default_password = ""

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.address = section.get("address")
        self.port = section.getint("port", -1)
        self.protocol = section.get("protocol", "http")
        self.user = section.get("user", self.default_user)
        self.password = section.get("password", self.default_password)

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        """``PROTOCOL://ADDRESS[:PORT]PATH[?QUERY]``."""
        host = self.address if self.port < 0 else f"{self.address}:{self.port}"
        out = f"{self.protocol}://{host}{path}"
        if query:
            out += "?" + urllib.parse.urlencode(query)
        return out

    def get_json(self, path: str, query: dict[str, Any] | None = None, **kw: Any) -> Any:
        """GET and decode JSON.  Raises DeviceError."""
        return _json(http_call("GET", self.url(path, query), **kw))


class Tasmota(HttpDevice):
    """``/cm?user=U&password=P&cmnd=Power{output_id}[ on|off]``; the reply is
    ``{"POWER{N}": "ON"}`` (``{"POWER": ...}`` on single-relay devices)."""

    type = "tasmota"
    has_timer = True
    default_user = "admin"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.output_id = section.getint("output_id", 1)

    def _send(self, arg: str | None) -> bool:
        cmnd = f"Power{self.output_id}" + (f" {arg}" if arg else "")
        data = self.get_json("/cm", {"user": self.user, "password": self.password,
                                     "cmnd": cmnd})
        value = None
        if isinstance(data, dict):
            value = data.get(f"POWER{self.output_id}", data.get("POWER"))
        if not isinstance(value, str) or value.upper() not in ("ON", "OFF"):
            raise DeviceError(f"unexpected Tasmota reply: {json.dumps(data)[:200]}")
        return value.upper() == "ON"

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        return self._send(None)

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        return self._send("on" if on else "off")


class Shelly(HttpDevice):
    """Gen 1: ``/relay/{output_id}[?turn=on|off]`` -> ``{"ison"}`` (HTTP basic
    auth when a password is set).  Gen 2+ devices answer 404 there and are
    then driven through ``/rpc/Switch.GetStatus`` and ``/rpc/Switch.Set``."""

    type = "shelly"
    has_timer = True

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        if self.password and not self.user:
            self.user = "admin"
        self.output_id = section.getint("output_id", 0)
        self.gen2 = False

    def _auth(self) -> dict[str, Any]:
        return {"auth": (self.user, self.password)} if self.password else {}

    def _gen1(self, query: dict[str, Any] | None) -> bool | None:
        resp = http_call("GET", self.url(f"/relay/{self.output_id}", query), **self._auth())
        if resp.status_code == 404:
            return None
        data = _json(resp)
        if not isinstance(data, dict) or "ison" not in data:
            raise DeviceError(f"unexpected Shelly reply: {json.dumps(data)[:200]}")
        return bool(data["ison"])

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        if not self.gen2:
            state = self._gen1(None)
            if state is not None:
                return state
            self.gen2 = True
        data = self.get_json("/rpc/Switch.GetStatus", {"id": self.output_id})
        if not isinstance(data, dict) or "output" not in data:
            raise DeviceError(f"unexpected Shelly reply: {json.dumps(data)[:200]}")
        return bool(data["output"])

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        if not self.gen2:
            state = self._gen1({"turn": "on" if on else "off"})
            if state is not None:
                return state
            self.gen2 = True
        self.get_json("/rpc/Switch.Set", {"id": self.output_id,
                                          "on": "true" if on else "false"})
        return self.query()


class Homeseer(HttpDevice):
    """``/JSON?user=U&pass=P&request=getstatus|controldevicebylabel&ref=ID``;
    the state is ``Devices[0].status`` (``On``/``Off``)."""

    type = "homeseer"
    default_user = "admin"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.device = section.getint("device")

    def _send(self, request: str, label: str | None = None) -> Any:
        query: dict[str, Any] = {"user": self.user, "pass": self.password,
                                 "request": request, "ref": self.device}
        if label:
            query["label"] = label
        return self.get_json("/JSON", query)

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        data = self._send("getstatus")
        try:
            return str(data["Devices"][0]["status"]).lower() == "on"
        except (KeyError, IndexError, TypeError):
            raise DeviceError(f"unexpected HomeSeer reply: {json.dumps(data)[:200]}") from None

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        self._send("controldevicebylabel", "On" if on else "Off")
        return self.query()


class HomeAssistant(HttpDevice):
    """``GET /api/states/DEVICE`` (``state``), ``POST
    /api/services/DOMAIN/turn_on|turn_off`` with ``{"entity_id"}``, bearer
    ``token``; the state is read again ``status_delay`` s after a change."""

    type = "homeassistant"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        if self.port < 0:
            self.port = 8123
        self.device = section.get("device")
        self.token = section.get("token")
        self.domain = section.get("domain", "switch")
        self.status_delay = section.getfloat("status_delay", 1.0, minval=0.0)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        data = self.get_json(f"/api/states/{self.device}", headers=self._headers())
        if not isinstance(data, dict) or "state" not in data:
            raise DeviceError(f"unexpected Home Assistant reply: {json.dumps(data)[:200]}")
        return data["state"] == "on"

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        service = "turn_on" if on else "turn_off"
        _json(http_call("POST", self.url(f"/api/services/{self.domain}/{service}"),
                        json={"entity_id": self.device}, headers=self._headers()))
        gevent.sleep(self.status_delay)
        return self.query()


class Loxone(HttpDevice):
    """Loxone Miniserver v1: ``/jdev/sps/io/OUTPUT[/on|off]`` with HTTP basic
    auth; the state is ``LL.value`` (``"1"``/``"0"``)."""

    type = "loxonev1"
    default_user = "admin"
    default_password = "admin"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.output_id = section.get("output_id", "")

    def _send(self, suffix: str) -> bool:
        data = self.get_json(f"/jdev/sps/io/{self.output_id}{suffix}",
                             auth=(self.user, self.password))
        try:
            return str(data["LL"]["value"]) == "1"
        except (KeyError, TypeError):
            raise DeviceError(f"unexpected Loxone reply: {json.dumps(data)[:200]}") from None

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        return self._send("")

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        return self._send("/on" if on else "/off")


class SmartThings(HttpDevice):
    """``POST /v1/devices/ID/commands`` with ``[{"component": "main",
    "capability": "switch", "command": "on"}]``, ``GET
    /v1/devices/ID/components/main/capabilities/switch/status``; bearer token."""

    type = "smartthings"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.device = section.get("device")
        self.token = section.get("token")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        data = self.get_json(f"/v1/devices/{self.device}/components/main/capabilities/"
                             "switch/status", headers=self._headers())
        try:
            return data["switch"]["value"] == "on"
        except (KeyError, TypeError):
            raise DeviceError(f"unexpected SmartThings reply: {json.dumps(data)[:200]}") from None

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        body = [{"component": "main", "capability": "switch", "command": "on" if on else "off"}]
        _json(http_call("POST", self.url(f"/v1/devices/{self.device}/commands"),
                        json=body, headers=self._headers()))
        return self.query()


class Hue(HttpDevice):
    """A Hue bridge: ``GET /api/USER/lights/ID`` (``state.on``) and ``PUT
    .../state`` ``{"on": bool}``; for ``device_type: group``,
    ``/groups/ID`` (``state.any_on``) and ``PUT .../action``."""

    type = "hue"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        self.device_id = section.get("device_id")
        self.device_type = section.get("device_type", "light")
        if self.device_type not in ("light", "group"):
            raise ConfigError(f"[{section.name}]: device_type must be 'light' or 'group'")

    def _base(self) -> str:
        kind = "groups" if self.device_type == "group" else "lights"
        return f"/api/{self.user}/{kind}/{self.device_id}"

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        data = self.get_json(self._base())
        try:
            if self.device_type == "group":
                return bool(data["state"]["any_on"])
            return bool(data["state"]["on"])
        except (KeyError, TypeError):
            raise DeviceError(f"unexpected Hue reply: {json.dumps(data)[:200]}") from None

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        leaf = "action" if self.device_type == "group" else "state"
        data = _json(http_call("PUT", self.url(f"{self._base()}/{leaf}"), json={"on": on}))
        if isinstance(data, list) and data and isinstance(data[0], dict) and "error" in data[0]:
            raise DeviceError(f"Hue bridge: {data[0]['error'].get('description', 'error')}")
        return on


# -- the generic http device ---------------------------------------------------
class HttpResponse:
    """What a template sees of a response (configuration.md "The HTTP
    Response object")."""

    def __init__(self, resp: requests.Response) -> None:
        self._resp = resp
        self.status_code = resp.status_code
        self.headers = dict(resp.headers)
        self.url = resp.request.url if resp.request is not None else resp.url
        self.final_url = resp.url
        self.content = resp.content
        self.text = resp.text

    def json(self) -> Any:
        """The decoded body.  Raises DeviceError when it is not JSON."""
        try:
            return self._resp.json()
        except ValueError:
            raise DeviceError(f"invalid JSON from {_strip_query(self.final_url)}") from None

    def has_error(self) -> bool:
        """True for a status outside 200-299."""
        return not 200 <= self.status_code < 300

    def raise_for_status(self, message: str | None = None) -> None:
        """Raise DeviceError (``message`` or the status) when :meth:`has_error`."""
        if self.has_error():
            raise DeviceError(message or f"HTTP {self.status_code} from "
                                         f"{_strip_query(self.final_url)}")


class HttpRequest:
    """The request object of the generic http device's templates
    (configuration.md "The HTTP Request object").  ``auth``: HTTP basic
    credentials ``(user, password)`` sent with every request, or None."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        self._default_url = url
        self._auth = auth
        self._last: HttpResponse | None = None
        self.reset()

    def reset(self) -> str:
        """Back to GET, no body, no headers, the command's configured URL.
        The setters return ``""`` so that ``{...}`` expressions print nothing."""
        self.method = "GET"
        self.url = self._default_url
        self.body: Any = None
        self.headers: dict[str, str] = {}
        return ""

    def set_method(self, method: str) -> str:
        """Set the HTTP method (``GET``, ``POST``, ``PUT`` ...)."""
        self.method = str(method).upper()
        return ""

    def set_url(self, url: str) -> str:
        """Set the URL (reserved characters already encoded)."""
        self.url = url
        return ""

    def set_body(self, body: Any) -> str:
        """Set the body: text, or a list/dict sent as JSON; None for none."""
        self.body = body
        return ""

    def add_header(self, name: str, value: str) -> str:
        """Add one request header."""
        self.headers[name] = value
        return ""

    def set_headers(self, headers: dict[str, str]) -> str:
        """Replace every request header."""
        self.headers = dict(headers)
        return ""

    def last_response(self) -> HttpResponse | None:
        """The last response received, or None before the first send."""
        return self._last

    def send(self, **_kw: Any) -> HttpResponse:
        """Send the request; a list/dict body goes as JSON."""
        kw: dict[str, Any] = {"headers": dict(self.headers)}
        if self._auth is not None:
            kw["auth"] = self._auth
        if isinstance(self.body, (dict, list)):
            kw["json"] = self.body
        elif self.body is not None:
            kw["data"] = str(self.body).encode()
        self._last = HttpResponse(http_call(self.method, self.url, **kw))
        return self._last


class GenericHttp(PowerDevice):
    """``on_url``, ``off_url``, ``status_url`` (templates with ``secrets``),
    optional ``request_template``, required ``response_template`` rendering
    ``on`` or ``off``; ``user``/``password``: HTTP basic credentials sent
    when ``user`` is set."""

    type = "http"

    def __init__(self, power: Any, section: Any) -> None:
        super().__init__(power, section)
        user = section.get("user", "")
        password = section.get("password", "")
        self.auth = (user, password) if user else None
        self.url_templates = {cmd: get_template(section, f"{cmd}_url")
                              for cmd in ("on", "off", "status")}
        self.request_template: Template | None = get_template(section, "request_template", None)
        self.response_template = get_template(section, "response_template")

    def _run(self, command: str) -> bool:
        try:
            urls = {cmd: t.render() for cmd, t in self.url_templates.items()}
            req = HttpRequest(urls[command], self.auth)
            ctx = {"command": command, "async_sleep": gevent.sleep, "log_debug": log.debug,
                   "http_request": req, "urls": urls}
            if self.request_template is not None:
                self.request_template.render(ctx)
            if req.last_response() is None:
                req.send()
            req.last_response().raise_for_status()
            result = self.response_template.render(ctx).strip().lower()
        except TemplateError as err:
            cause = err.__cause__
            if isinstance(cause, DeviceError):
                raise DeviceError(str(cause)) from None
            raise DeviceError(str(err)) from None
        if result not in ("on", "off"):
            raise DeviceError(f"response_template rendered '{result[:80]}', "
                              "not 'on' or 'off'")
        return result == "on"

    def query(self) -> bool:
        """Read the state (True: on); raises DeviceError."""
        return self._run("status")

    def command(self, on: bool) -> bool:
        """Switch on/off; returns the reported state; raises DeviceError."""
        return self._run("on" if on else "off")


TYPES: dict[str, type] = {
    "tasmota": Tasmota, "shelly": Shelly, "homeseer": Homeseer,
    "homeassistant": HomeAssistant, "loxonev1": Loxone, "smartthings": SmartThings,
    "hue": Hue, "http": GenericHttp,
}
