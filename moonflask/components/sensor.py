"""The ``sensor`` component: ``[sensor NAME]`` sections (type ``mqtt``).

Spec: configuration.md ``[sensor]`` ("Options common to all sensor devices",
"History Fields", "MQTT Sensor Configuration"); web_api.md "Sensor APIs";
REFERENCE_NOTES.md (updates are sent as ``notify_sensor_update``).

An MQTT sensor subscribes to ``state_topic`` through the ``mqtt`` component;
each message is rendered through ``state_response_template`` (Jinja2,
sandboxed, Klipper's ``{ }`` delimiters, ``payload`` and ``set_result(name,
value)`` in its context, ``fromjson`` filter).  The values set become the
sensor's ``values``; a change is announced as ``notify_sensor_update``
``[{sensor_id: values}]``.  Once a second the latest values are appended to
per-parameter ring buffers of ``sensor_store_size`` samples (the
reference's option; default: ``[data_store] temperature_store_size``), served by
``server.sensors.measurements``.

``history_field_*`` options track a parameter during print jobs with the
strategies of configuration.md (basic, accumulate, delta, average, maximum,
minimum, collect); the history component asks for the values through the
``history:auxiliary_data`` event (see :meth:`Sensors.add_auxiliary_data`),
and for the fields with ``report_total``/``report_maximum`` through
``history:auxiliary_reports`` (the job totals' ``auxiliary_totals``).

A job survives a restart of moonflask: while a job runs, the trackers' state
is saved (namespace ``moonraker`` key ``sensor_trackers``, at most once a
second by the sampler, and at shutdown); when the history component picks the
job up again (``history:job_restored``) the trackers continue from it.  A job
the history starts for a print found running (``history:job_added`` with no
``job_state:started`` seen) is tracked from then on.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..api import ApiError
from ..config import ConfigError

log = logging.getLogger(__name__)

SENSOR_TYPES = ("mqtt",)
STRATEGIES = ("basic", "accumulate", "delta", "average", "maximum", "minimum", "collect")
COLLECT_MAX = 100
TRACKERS_KEY = "sensor_trackers"   # namespace "moonraker": the running job's trackers


def template_env() -> SandboxedEnvironment:
    """Sandboxed Jinja2 with Klipper's ``{ }`` expression delimiters and a
    ``fromjson`` filter."""
    env = SandboxedEnvironment(block_start_string="{%", block_end_string="%}",
                               variable_start_string="{", variable_end_string="}",
                               comment_start_string="{#", comment_end_string="#}",
                               autoescape=False, undefined=jinja2.StrictUndefined)
    env.filters["fromjson"] = json.loads
    return env


def _bool(value: Any, option: str, section: str) -> bool:
    low = str(value).strip().lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0", "none", ""):
        return False
    raise ConfigError(f"[{section}]: invalid boolean '{value}' for '{option}'")


class HistoryField:
    """One ``history_field_NAME`` option: tracks one parameter during a job.

    Raises: ConfigError for a missing ``parameter`` or an unknown strategy.
    """

    def __init__(self, sensor: "Sensor", name: str, spec: dict[str, Any]) -> None:
        section = sensor.section
        self.sensor = sensor
        self.field = name
        self.parameter = spec.get("parameter")
        if not self.parameter:
            raise ConfigError(f"[{section}]: history_field_{name} needs a 'parameter'")
        self.description = spec.get("desc")
        self.strategy = spec.get("strategy") or "basic"
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"[{section}]: invalid strategy '{self.strategy}' for "
                              f"history_field_{name}; one of {list(STRATEGIES)}")
        self.units = spec.get("units")
        self.init_tracker = _bool(spec.get("init_tracker", False), "init_tracker", section)
        self.exclude_paused = _bool(spec.get("exclude_paused", False), "exclude_paused",
                                    section)
        self.report_total = _bool(spec.get("report_total", False), "report_total", section)
        self.report_maximum = _bool(spec.get("report_maximum", False), "report_maximum",
                                    section)
        precision = spec.get("precision")
        try:
            self.precision = int(precision) if precision not in (None, "") else None
        except ValueError:
            raise ConfigError(f"[{section}]: invalid precision '{precision}'") from None
        self.reset()

    def reset(self) -> None:
        """Start a new job: tracked value 0 (or the last measurement with
        ``init_tracker``)."""
        self.value: Any = [] if self.strategy == "collect" else 0
        self.count = 0
        self.last: float | None = None   # delta: previous measurement
        self.tracking = True
        latest = self.sensor.values.get(self.parameter)
        if self.init_tracker and latest is not None:
            self.update(latest)

    def update(self, value: Any) -> None:
        """Apply one measurement of the parameter."""
        if not self.tracking:
            return
        strategy = self.strategy
        if strategy == "collect":
            if value not in self.value:
                self.value.append(value)
                del self.value[:-COLLECT_MAX]
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            if strategy == "basic":
                self.value = value
            return
        first = self.count == 0
        self.count += 1
        if strategy == "basic":
            self.value = value
        elif strategy == "accumulate":
            self.value += value
        elif strategy == "delta":
            if self.last is not None:
                self.value += value - self.last
            self.last = value
        elif strategy == "average":
            self.value = value if first else self.value + (value - self.value) / self.count
        elif strategy == "maximum":
            self.value = value if first else max(self.value, value)
        elif strategy == "minimum":
            self.value = value if first else min(self.value, value)

    def pause(self, paused: bool) -> None:
        """Job paused/resumed: with ``exclude_paused`` stop/resume tracking
        (delta restarts from the next measurement)."""
        if self.exclude_paused:
            self.tracking = not paused
            if paused:
                self.last = None

    def state(self) -> dict[str, Any]:
        """The tracker's state, JSON-able (saved while a job runs)."""
        return {"value": self.value, "count": self.count, "last": self.last,
                "tracking": self.tracking}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` saved earlier."""
        value = state.get("value")
        if self.strategy == "collect":
            self.value = list(value) if isinstance(value, list) else []
        elif isinstance(value, (int, float, str)) or value is None:
            self.value = 0 if value is None else value
        self.count = int(state.get("count") or 0)
        last = state.get("last")
        self.last = last if isinstance(last, (int, float)) else None
        self.tracking = bool(state.get("tracking", True))

    def result(self) -> Any:
        """The tracked value, rounded to ``precision``."""
        if self.precision is not None and isinstance(self.value, float):
            return round(self.value, self.precision)
        return self.value

    def describe(self) -> dict[str, Any]:
        """The ``history_fields`` entry of ``server.sensors.info?extended``."""
        return {"field": self.field, "provider": self.sensor.section,
                "description": self.description, "strategy": self.strategy,
                "units": self.units, "init_tracker": self.init_tracker,
                "exclude_paused": self.exclude_paused, "report_total": self.report_total,
                "report_maximum": self.report_maximum, "precision": self.precision,
                "parameter": self.parameter}

    def auxiliary(self) -> dict[str, Any]:
        """The job's ``auxiliary_data`` entry."""
        return {"provider": self.sensor.section, "name": self.field, "value": self.result(),
                "description": self.description, "units": self.units}


class Sensor:
    """One ``[sensor NAME]`` of type mqtt.

    Raises: ConfigError (missing type/state_topic/template, bad template).
    """

    def __init__(self, owner: "Sensors", config: Any, store_size: int) -> None:
        self.owner = owner
        self.section = config.name
        self.id = config.name.split(None, 1)[1].strip()
        self.type = config.get("type")
        if self.type not in SENSOR_TYPES:
            raise ConfigError(f"[{self.section}]: unsupported sensor type '{self.type}'; "
                              f"supported: {list(SENSOR_TYPES)}")
        self.friendly_name = config.get("name", self.id)
        self.values: dict[str, Any] = {}
        self.parameter_info: list[dict[str, Any]] = []
        self.history_fields: list[HistoryField] = []
        for option in config.options():
            if option.startswith("parameter_"):
                info = dict(config.getdict(option))
                info["name"] = option[len("parameter_"):]
                self.parameter_info.append(info)
            elif option.startswith("history_field_"):
                self.history_fields.append(HistoryField(
                    self, option[len("history_field_"):], config.getdict(option)))
        self.store: dict[str, deque] = {}
        self.store_size = config.getint("sensor_store_size", store_size, minval=1)
        mqtt = owner.server.lookup_component("mqtt", None)
        if mqtt is None:
            raise ConfigError(f"[{self.section}]: an mqtt sensor needs the [mqtt] section")
        qos = config.getint("qos", None, minval=0, maxval=2)   # None: [mqtt] default_qos
        self.state_topic = config.get("state_topic")
        source = config.get("state_response_template")
        try:
            self.template = owner.env.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(f"[{self.section}]: state_response_template: {err}") from None
        mqtt.subscribe(self.state_topic, self._on_state, qos)

    def _on_state(self, _topic: str, payload: bytes, _props: Any) -> None:
        results: dict[str, Any] = {}

        def set_result(name: str, value: Any) -> str:
            results[str(name)] = value
            return ""
        try:
            self.template.render(payload=payload.decode("utf-8", "replace"),
                                 set_result=set_result)
        except Exception as err:   # a payload the template cannot handle
            log.error("[%s] state_response_template failed for %r: %s",
                      self.section, payload[:200], err)
            return
        if not results:
            return
        changed = any(self.values.get(k) != v for k, v in results.items())
        self.values.update(results)
        self.owner.on_measurement(self, results)
        if changed:
            self.owner.server.events.notify("notify_sensor_update",
                                            [{self.id: dict(self.values)}])

    def sample(self) -> None:
        """Append the latest value of every parameter to its ring buffer."""
        for name, value in self.values.items():
            buf = self.store.get(name)
            if buf is None:
                buf = self.store[name] = deque(maxlen=self.store_size)
            buf.append(value)

    def info(self, extended: bool = False) -> dict[str, Any]:
        """``{"id", "friendly_name", "type", "values"}`` (+ ``parameter_info``,
        ``history_fields`` when extended)."""
        out: dict[str, Any] = {"id": self.id, "friendly_name": self.friendly_name,
                               "type": self.type, "values": dict(self.values)}
        if extended:
            out["parameter_info"] = [dict(p) for p in self.parameter_info]
            out["history_fields"] = [f.describe() for f in self.history_fields]
        return out

    def measurements(self) -> dict[str, list[Any]]:
        """``{parameter: [oldest ... newest]}``."""
        return {name: list(buf) for name, buf in self.store.items()}


class Sensors:
    """Every ``[sensor NAME]`` section.

    Args:
        server: the :class:`moonflask.app.Server` (needs the mqtt component).
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.env = template_env()
        size = server.config.section("data_store").getint("temperature_store_size", 1200,
                                                          minval=1)
        self.sensors: dict[str, Sensor] = {}
        for section in server.config.prefix_sections("sensor "):
            sensor = Sensor(self, server.config.section(section), size)
            self.sensors[sensor.id] = sensor
        self._job_active = False
        self._job_id: str | None = None
        self._dirty = False
        self._meta = server.database.namespace("moonraker")
        saved = self._meta.get(TRACKERS_KEY, None) if self._fields() else None
        self._saved: dict[str, Any] | None = saved if isinstance(saved, dict) else None
        ev = server.events
        ev.on("job_state:started", lambda prev, new: self._job_started())
        ev.on("job_state:init", self._on_job_state_init)
        ev.on("job_state:paused", lambda prev, new: self._job_paused(True))
        ev.on("job_state:resumed", lambda prev, new: self._job_paused(False))
        for name in ("complete", "cancelled", "error", "standby"):
            ev.on(f"job_state:{name}", lambda prev, new: self._job_ended())
        ev.on("history:auxiliary_data", self.add_auxiliary_data)
        ev.on("history:auxiliary_reports", self.add_auxiliary_reports)
        ev.on("history:job_added", self._on_job_added)
        ev.on("history:job_restored", self._on_job_restored)
        ev.on("history:job_finished", self._on_job_finished)
        ev.on("server:shutdown", self.save_trackers)
        from ..workers.sensor import run
        self.worker = server.workers.start("sensor", run, self)

    def get(self, sensor_id: str) -> Sensor:
        """The sensor ``sensor_id``; ApiError 400 when there is none (as the reference)."""
        sensor = self.sensors.get(sensor_id)
        if sensor is None:
            raise ApiError(f"No valid sensor named {sensor_id}", 400)
        return sensor

    def sample_all(self) -> None:
        """Store one measurement of every sensor (the sampler, once a second)."""
        for sensor in self.sensors.values():
            sensor.sample()
        self.save_trackers()

    # -- history fields ---------------------------------------------------
    def on_measurement(self, sensor: Sensor, results: dict[str, Any]) -> None:
        """Feed a sensor's new values to its history fields during a job."""
        if not self._job_active:
            return
        for field in sensor.history_fields:
            if field.parameter in results:
                field.update(results[field.parameter])
                self._dirty = True

    def _fields(self) -> list[HistoryField]:
        return [f for s in self.sensors.values() for f in s.history_fields]

    def _job_started(self) -> None:
        self._job_active = True
        self._job_id = None
        for field in self._fields():
            field.reset()
        self._dirty = True

    def _job_paused(self, paused: bool) -> None:
        for field in self._fields():
            field.pause(paused)
        self._dirty = True

    def _job_ended(self) -> None:
        self._job_active = False

    def _klippy_paused(self) -> bool:
        js = self.server.components.get("job_state")
        return js is not None and js.stats.get("state") == "paused"

    def _on_job_state_init(self, stats: dict[str, Any]) -> None:
        """Klippy (re)identified while printing and no job tracked (moonflask
        started mid-print): track from now on; a job the history resumes
        takes its saved trackers back in :meth:`_on_job_restored`."""
        if not self._job_active and stats.get("state") in ("printing", "paused"):
            self._job_started()
            self._job_paused(stats.get("state") == "paused")

    def _on_job_added(self, job: dict[str, Any]) -> None:
        if not self._job_active:
            # a print found running (moonflask started mid-print): no
            # job_state:started was seen, track from now on
            self._job_started()
            self._job_paused(self._klippy_paused())
        self._job_id = job.get("job_id")
        self._dirty = True

    def _on_job_restored(self, job: dict[str, Any]) -> None:
        """The history resumed a job saved before a restart: continue the
        trackers saved for it (none saved: from zero)."""
        saved = self._saved or {}
        states = saved.get("fields") if saved.get("job_id") == job.get("job_id") else None
        for field in self._fields():
            field.reset()
            state = (states or {}).get(_field_key(field))
            if isinstance(state, dict):
                field.restore(state)
        self._job_active = True
        self._job_id = job.get("job_id")
        if self._klippy_paused():
            self._job_paused(True)
        self._dirty = True

    def _on_job_finished(self, _job: dict[str, Any]) -> None:
        self._job_active = False
        self._job_id = None
        self._dirty = True

    def save_trackers(self) -> None:
        """Save the trackers of the running job when they changed (the
        sampler calls it once a second; also at shutdown)."""
        if not self._dirty:
            return
        self._dirty = False
        if self._job_active and self._job_id is not None:
            state = {"job_id": self._job_id,
                     "fields": {_field_key(f): f.state() for f in self._fields()}}
            self._saved = state
            self._meta.insert(TRACKERS_KEY, state)
        elif self._saved is not None and not self._job_active:
            self._saved = None
            self._meta.pop(TRACKERS_KEY, None)

    def add_auxiliary_data(self, aux: list[dict[str, Any]]) -> None:
        """``history:auxiliary_data`` listener: append each history field's
        entry ``{"provider", "name", "value", "description", "units"}`` to a
        job's ``auxiliary_data`` list (at its start and its end)."""
        aux.extend(f.auxiliary() for f in self._fields())

    def add_auxiliary_reports(self, reports: list[dict[str, Any]]) -> None:
        """``history:auxiliary_reports`` listener: append ``{"provider",
        "field", "maximum": bool, "total": bool}`` for each history field
        with ``report_maximum`` or ``report_total`` (the job totals'
        ``auxiliary_totals``)."""
        reports.extend({"provider": f.sensor.section, "field": f.field,
                        "maximum": f.report_maximum, "total": f.report_total}
                       for f in self._fields() if f.report_maximum or f.report_total)


def _field_key(field: HistoryField) -> str:
    return f"{field.sensor.section}/{field.field}"


def load_component(server: Any, _config: Any) -> Sensors:
    """Create the sensor component from every ``[sensor NAME]`` section."""
    return Sensors(server)


