"""Sensor endpoints.  Spec: web_api.md "Sensor APIs" (list, info,
measurements); ``extended`` adds ``parameter_info`` and ``history_fields``
as the reference does."""
from __future__ import annotations

from typing import Any

from ..api import ApiBlueprint, ApiRequest

blueprint = ApiBlueprint("sensors", __name__, component="sensor")


def _sensors(req: ApiRequest) -> Any:
    return req.server.lookup_component("sensor")


@blueprint.endpoint("/server/sensors/list", ["GET"])
def sensors_list(req: ApiRequest) -> dict[str, Any]:
    """``{"sensors": {id: info}}``."""
    extended = req.args.get_boolean("extended", False)
    return {"sensors": {sid: s.info(extended) for sid, s in _sensors(req).sensors.items()}}


@blueprint.endpoint("/server/sensors/info", ["GET"])
def sensors_info(req: ApiRequest) -> dict[str, Any]:
    """One sensor's info (``sensor`` required; unknown: 400)."""
    sensor_id = req.args.get_str("sensor")
    extended = req.args.get_boolean("extended", False)
    return _sensors(req).get(sensor_id).info(extended)


@blueprint.endpoint("/server/sensors/measurements", ["GET"])
def sensors_measurements(req: ApiRequest) -> dict[str, Any]:
    """``{id: {parameter: [values]}}`` for ``sensor``, or every sensor."""
    comp = _sensors(req)
    sensor_id = req.args.get_str("sensor", None)
    if sensor_id is not None:
        return {sensor_id: comp.get(sensor_id).measurements()}
    return {sid: s.measurements() for sid, s in comp.sensors.items()}
