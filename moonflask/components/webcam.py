"""Webcams from ``[webcam NAME]`` sections and the database.
Spec: web_api.md "Webcam APIs", "Appendix / Webcams changed event".

Configured webcams (``source: config``) are read-only; webcams added by
clients (``source: database``) live in the database namespace ``webcams``
as Moonraker 0.11 stores them: keyed by ``uid``, with Moonraker's own field
names (``urlStream``, ``urlSnapshot``, ``flipX``, ``flipY``, ``targetFps``,
``targetFpsIdle``, ``aspectRatio``, ...; see :data:`DB_FIELDS`), so a
``printer_data`` switched from Moonraker keeps its webcams and a moonflask
backup restored by Moonraker keeps them too.  Records of older moonflask
versions (keyed by name, API field names) are read as well and rewritten in
Moonraker's form when next changed.  Every webcam has a ``uid`` (config
webcams: a stable UUID5 derived from the data path and the name; others: a
random UUID4).  Names are unique across both sources.
"""
from __future__ import annotations

import logging
import socket
import uuid
from typing import Any


from ..api import ApiError

log = logging.getLogger(__name__)


DB_NS = "webcams"
ROTATIONS = (0, 90, 180, 270)
FIELDS: dict[str, Any] = {   # field -> default for new webcams (reference order)
    "enabled": True, "icon": "mdiWebcam", "aspect_ratio": "4:3", "target_fps": 15,
    "target_fps_idle": 5, "location": "printer", "service": "mjpegstreamer",
    "stream_url": "", "snapshot_url": "", "flip_horizontal": False,
    "flip_vertical": False, "rotation": 0,
}
BOOL_FIELDS = ("enabled", "flip_horizontal", "flip_vertical")
INT_FIELDS = ("target_fps", "target_fps_idle", "rotation")
STR_FIELDS = ("icon", "aspect_ratio", "location", "service", "stream_url", "snapshot_url")
TEST_TIMEOUT = 4.0  # seconds for the snapshot reachability test
#: API field -> Moonraker 0.11's field in the database record (its order).
DB_FIELDS = {"service": "service", "target_fps": "targetFps", "stream_url": "urlStream",
             "snapshot_url": "urlSnapshot", "flip_horizontal": "flipX",
             "flip_vertical": "flipY", "enabled": "enabled",
             "target_fps_idle": "targetFpsIdle", "aspect_ratio": "aspectRatio",
             "icon": "icon", "location": "location", "rotation": "rotation"}


def from_db(key: str, rec: Any) -> dict[str, Any] | None:
    """A database record of namespace ``webcams`` as an API webcam.

    Args:
        key: the record's key: the uid (Moonraker's form, ``name`` in the
            record) or the name (older moonflask records, ``stream_url`` and
            ``uid`` in the record).
        rec: the stored value.
    Returns: ``{"name", FIELDS..., "source": "database", "extra_data",
        "uid", "_key"}`` (``_key``: where it is stored), or None when ``rec``
        is not a webcam.
    """
    if not isinstance(rec, dict):
        return None
    cam: dict[str, Any] = {}
    if "stream_url" in rec and "urlStream" not in rec:        # older moonflask record
        cam.update({k: rec.get(k, d) for k, d in FIELDS.items()})
        cam["name"] = key
        cam["uid"] = str(rec.get("uid") or uuid.uuid5(uuid.NAMESPACE_URL, f"webcam:{key}"))
    else:                                                     # Moonraker's record
        cam.update({api: rec.get(db, FIELDS[api]) for api, db in DB_FIELDS.items()})
        cam["name"] = str(rec.get("name") or key)
        cam["uid"] = key
    cam["source"] = "database"
    cam["extra_data"] = rec.get("extra_data") if isinstance(rec.get("extra_data"), dict) else {}
    cam["_key"] = key
    return cam


def to_db(cam: dict[str, Any]) -> dict[str, Any]:
    """An API webcam as Moonraker 0.11 stores it (``{"name", "service",
    "targetFps", "urlStream", ...,  "extra_data"}``, keyed by its uid)."""
    rec: dict[str, Any] = {"name": cam["name"]}
    rec.update({db: cam[api] for api, db in DB_FIELDS.items()})
    rec["extra_data"] = cam.get("extra_data") or {}
    return rec


def _ordered(cam: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": cam["name"]}
    for key, default in FIELDS.items():
        out[key] = cam.get(key, default)
    out["source"] = cam.get("source", "database")
    out["extra_data"] = cam.get("extra_data") or {}
    out["uid"] = cam["uid"]
    return out


def host_ip() -> str:
    """This machine's primary IPv4 address (for relative webcam URLs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class Webcams:
    """The webcam component.

    Args:
        server: the :class:`moonflask.app.Server`.
    Raises:
        ConfigError: a ``[webcam NAME]`` section is invalid.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.config_cams: dict[str, dict[str, Any]] = {}
        cfg = server.config
        for section in cfg.prefix_sections("webcam "):
            name = section.split(None, 1)[1].strip()
            sec = cfg.section(section)
            cam: dict[str, Any] = {"name": name}
            for key, default in FIELDS.items():
                if key in BOOL_FIELDS:
                    cam[key] = sec.getboolean(key, default)
                elif key in INT_FIELDS:
                    cam[key] = sec.getint(key, default)
                elif key == "stream_url":
                    cam[key] = sec.get(key)
                else:
                    cam[key] = sec.get(key, default)
            if cam["rotation"] not in ROTATIONS:
                from ..config import ConfigError
                raise ConfigError(f"[{section}]: Invalid value for 'rotation': {cam['rotation']}")
            cam["source"] = "config"
            cam["extra_data"] = {}
            cam["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL,
                                        f"moonflask:{server.data_path}:webcam:{name}"))
            self.config_cams[name] = cam
        # created by the first webcam added, as the reference does
        self.db = server.database.namespace(DB_NS, create=False)

    # -- lookups ----------------------------------------------------------
    def _db_cams(self) -> dict[str, dict[str, Any]]:
        """The database's webcams by name (see :func:`from_db`)."""
        out = {}
        for key, rec in self.db.items():
            cam = from_db(key, rec)
            if cam is not None and cam["name"] not in self.config_cams:
                out[cam["name"]] = cam
        return out

    def list(self) -> list[dict[str, Any]]:
        """Every webcam: configured ones first, then the database's by name."""
        cams = [_ordered(c) for c in self.config_cams.values()]
        cams += [_ordered(c) for c in self._db_cams().values()]
        return cams

    def find(self, uid: str | None, name: str | None) -> dict[str, Any]:
        """The webcam with ``uid`` (preferred) or ``name``.

        Raises: ApiError 400 without either, 404 when not found.
        """
        cams = list(self.config_cams.values()) + list(self._db_cams().values())
        found = self._find(cams, uid, name)
        return _ordered(found)

    @staticmethod
    def _find(cams: list[dict[str, Any]], uid: str | None,
              name: str | None) -> dict[str, Any]:
        if uid is not None:
            for cam in cams:
                if cam["uid"] == uid:
                    return cam
            raise ApiError(f"Webcam with UID {uid} not found", 404)
        if name is None:
            raise ApiError("No data for argument: name", 400)
        for cam in cams:
            if cam["name"] == name:
                return cam
        raise ApiError(f"Webcam {name} not found", 404)

    def _stored_key(self, cam: dict[str, Any]) -> str | None:
        """Where the database webcam ``cam`` is stored (None: nowhere)."""
        found = self._db_cams().get(cam["name"])
        return found["_key"] if found is not None and found["uid"] == cam["uid"] else None

    def _notify(self) -> None:
        self.server.events.notify("notify_webcams_changed", [{"webcams": self.list()}])

    # -- changes ----------------------------------------------------------
    def add_or_update(self, args: Any) -> dict[str, Any]:
        """server.webcams.post_item: update the webcam named by ``uid`` (or
        by ``name`` when it exists), else add a new one."""
        uid = args.get_str("uid", None)
        name = args.get_str("name", None)
        existing: dict[str, Any] | None = None
        if uid is not None:
            existing = self.find(uid, None)
        elif name is not None:
            try:
                existing = self.find(None, name)
            except ApiError:
                existing = None
        else:
            raise ApiError("No data for argument: name", 400)
        if existing is not None and existing["source"] == "config":
            raise ApiError(f"Cannot overwrite webcam '{existing['name']}' sourced from "
                           "Moonraker configuration", 400)
        if existing is None:
            cam = dict(FIELDS, name=name, extra_data={}, uid=str(uuid.uuid4()),
                       source="database")
            cam["stream_url"] = args.get_str("stream_url")
        else:
            cam = dict(existing)
        old_name = cam["name"]
        if name is not None and name != old_name:
            taken = name in self.config_cams or name in self._db_cams()
            if taken:
                raise ApiError(f"Cannot rename webcam from '{old_name}' to '{name}'.  Webcam "
                               f"with requested name '{name}' already exists.", 400)
            cam["name"] = name
        if not cam["name"]:
            raise ApiError("Webcam name cannot be empty", 400)
        for key in BOOL_FIELDS:
            cam[key] = args.get_boolean(key, cam[key])
        for key in INT_FIELDS:
            cam[key] = args.get_int(key, cam[key])
        for key in STR_FIELDS:
            cam[key] = args.get_str(key, cam[key])
        cam["extra_data"] = args.get_dict("extra_data", cam.get("extra_data") or {})
        if cam["rotation"] not in ROTATIONS:
            raise ApiError(f"Invalid value for 'rotation': {cam['rotation']}", 400)
        if existing is not None:
            key = self._stored_key(dict(existing, name=old_name))
            if key is not None and key != cam["uid"]:   # an older moonflask record
                self.db.pop(key, None)
        self.db.insert(cam["uid"], to_db(cam))
        self._notify()
        return _ordered(cam)

    def delete(self, uid: str | None, name: str | None) -> dict[str, Any]:
        """server.webcams.delete_item; configured webcams are refused (400)."""
        cam = self.find(uid, name)
        if cam["source"] == "config":
            raise ApiError(f"Cannot delete webcam '{cam['name']}' sourced from "
                           "Moonraker configuration", 400)
        key = self._stored_key(cam)
        if key is not None:
            self.db.pop(key, None)
        self._notify()
        return cam

    def test(self, uid: str | None, name: str | None) -> dict[str, Any]:
        """server.webcams.test: absolute URLs and snapshot reachability."""
        import requests  # ~8 MB: loaded on first use
        cam = self.find(uid, name)
        ip = host_ip()

        def resolve(url: str) -> str:
            if not url:
                return url
            if "://" in url:
                return url
            return f"http://{ip}/{url.lstrip('/')}"

        snap = resolve(cam["snapshot_url"])
        reachable = False
        if snap.startswith(("http://", "https://")):
            try:
                resp = requests.get(snap, timeout=TEST_TIMEOUT, stream=True)
                reachable = resp.status_code == 200
                resp.close()
            except requests.RequestException as err:
                log.info("webcam %s: snapshot %s unreachable: %s", cam["name"], snap, err)
        return {"name": cam["name"], "snapshot_reachable": reachable,
                "snapshot_url": snap, "stream_url": resolve(cam["stream_url"])}


def load_component(server: Any, _config: Any) -> Webcams:
    """Create the webcam component (always loaded)."""
    return Webcams(server)
