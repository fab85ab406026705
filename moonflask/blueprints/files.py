"""Endpoints of the files API group.  Spec: web_api.md "File Operations".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
import mimetypes
import os
from typing import Any

import flask

from ..api import ALL_TRANSPORTS, HTTP, ApiBlueprint, ApiError, ApiRequest, json_response
from ..components.file_manager.manager import FileManager
from ..components.file_manager.roots import clean_relative, is_gcode, join

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("files", __name__)

NON_HTTP = ALL_TRANSPORTS - {HTTP}
TEXT_EXTENSIONS = (".gcode", ".g", ".gco", ".nc", ".cfg", ".conf", ".log", ".txt", ".md",
                   ".json", ".yaml", ".yml", ".sh", ".py", ".ini")


def _fm(req: ApiRequest) -> FileManager:
    return req.server.components["file_manager"]


# -- endpoints -----------------------------------------------------------------
@blueprint.endpoint("/server/files/list", ["GET"])
def files_list(req: ApiRequest) -> list[dict[str, Any]]:
    """web_api.md "List available files"."""
    return _fm(req).list_files(req.args.get_str("root", "gcodes"))


@blueprint.endpoint("/server/files/roots", ["GET"])
def files_roots(req: ApiRequest) -> list[dict[str, Any]]:
    """web_api.md "List registered roots"."""
    return [r.info() for r in _fm(req).roots.values()]


def _gcode_filename(req: ApiRequest) -> str:
    raw = req.args.get_str("filename")
    if raw.startswith("/"):
        raise ApiError("Invalid path in argument [filename]: absolute paths are not allowed",
                       403)
    return clean_relative(raw, "filename")


@blueprint.endpoint("/server/files/metadata", ["GET"])
def files_metadata(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get GCode Metadata"."""
    fm = _fm(req)
    rel = _gcode_filename(req)
    md = fm.get_metadata(rel) if rel and is_gcode(rel) else None
    if md is None:
        raise ApiError(f"Metadata not available for <{rel}>", 404)
    out = dict(md)
    out["filename"] = rel
    return out


@blueprint.endpoint("/server/files/metascan", ["GET", "POST"], rpc="server.files.metascan")
def files_metascan(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Scan GCode Metadata" (forces a rescan)."""
    fm = _fm(req)
    rel = _gcode_filename(req)
    full = join(fm.roots["gcodes"], rel)
    if not rel or not os.path.isfile(full):
        raise ApiError(f"File '{rel}' does not exist", 404)
    fm._forget_metadata(rel, False, remove_thumbs=False)
    out = dict(fm.scan_metadata(rel))
    out["filename"] = rel
    return out


@blueprint.endpoint("/server/files/thumbnails", ["GET"])
def files_thumbnails(req: ApiRequest) -> list[dict[str, Any]]:
    """web_api.md "Get GCode Thumbnails": paths relative to ``gcodes``."""
    fm = _fm(req)
    rel = _gcode_filename(req)
    md = fm.get_metadata(rel) if rel and is_gcode(rel) else None
    if md is None:
        return []
    folder = os.path.dirname(rel)
    out = []
    for th in md.get("thumbnails") or []:
        th = dict(th)
        rp = th.pop("relative_path", "")
        th["thumbnail_path"] = f"{folder}/{rp}" if folder else rp
        out.append(th)
    return out


@blueprint.endpoint("/server/files/directory", ["GET", "POST", "DELETE"])
def files_directory(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get directory information", "Create directory", "Delete directory"."""
    fm = _fm(req)
    if req.method == "GET":
        return fm.get_directory(req.args.get_str("path", "gcodes"),
                                req.args.get_boolean("extended", False))
    path = req.args.get_str("path")
    if req.method == "POST":
        return fm.make_directory(path)
    return fm.delete_directory(path, req.args.get_boolean("force", False))


@blueprint.endpoint("/server/files/move", ["POST"])
def files_move(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Move a file or directory"."""
    return _fm(req).move(req.args.get_str("source"), req.args.get_str("dest"))


@blueprint.endpoint("/server/files/copy", ["POST"])
def files_copy(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Copy a file or directory"."""
    return _fm(req).move(req.args.get_str("source"), req.args.get_str("dest"), copy=True)


@blueprint.endpoint("/server/files/zip", ["POST"])
def files_zip(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Create a ZIP archive"."""
    items = req.args.get_list("items")
    return _fm(req).zip_files(req.args.get_str("dest", None), items,
                              req.args.get_boolean("store_only", False))


@blueprint.endpoint("/server/files/delete_file", ["DELETE"], rpc="server.files.delete_file",
                    transports=NON_HTTP)
def files_delete_file(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "File delete" (JSON-RPC: ``path`` = ``root/filename``)."""
    return _fm(req).delete_file(req.args.get_str("path"))


@blueprint.endpoint("/server/files/<root>/<path:filename>", ["DELETE"], rpc="")
def files_delete_http(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "File delete" (HTTP ``DELETE /server/files/{root}/{filename}``)."""
    view = req.http.view_args or {}
    return _fm(req).delete_file(f"{view.get('root', '')}/{view.get('filename', '')}")


def send_path(full: str, name: str) -> flask.Response:
    """A download of ``full`` (Range and conditional requests supported)."""
    mimetype = mimetypes.guess_type(name)[0]
    if mimetype is None:
        ext = os.path.splitext(name)[1].lower()
        mimetype = "text/plain" if ext in TEXT_EXTENSIONS else "application/octet-stream"
    resp = flask.send_file(full, mimetype=mimetype, as_attachment=False,
                           conditional=True, etag=True, max_age=None)
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_")
    resp.headers["Content-Disposition"] = (f'attachment; filename="{ascii_name}"; '
                                           f"filename*=UTF-8''{_quote(name)}")
    resp.headers.setdefault("Accept-Ranges", "bytes")
    return resp


def _quote(name: str) -> str:
    from urllib.parse import quote
    return quote(name, safe="")


@blueprint.endpoint("/server/files/<root>/<path:filename>", ["GET"], rpc="")
def files_download(req: ApiRequest) -> flask.Response:
    """web_api.md "File download"."""
    fm = _fm(req)
    view = req.http.view_args or {}
    root = fm.roots.get(view.get("root", ""))
    if root is None:
        raise ApiError("Not Found", 404)
    rel = clean_relative(view.get("filename", ""), "filename")
    full = join(root, rel)
    if not rel or not os.path.isfile(full):
        raise ApiError("File does not exist", 404)
    if not os.access(full, os.R_OK):
        raise ApiError("File is not readable", 403)
    return send_path(full, os.path.basename(rel))


def _log_download(req: ApiRequest, path: str | None) -> flask.Response:
    if not path or not os.path.isfile(path):
        raise ApiError("File does not exist", 404)
    return send_path(path, os.path.basename(path))


@blueprint.endpoint("/server/files/klippy.log", ["GET"], rpc="")
def files_klippy_log(req: ApiRequest) -> flask.Response:
    """web_api.md "Download klippy.log" (Klippy's ``log_file``)."""
    info = req.server.klippy.info or {}
    path = info.get("log_file") or os.path.join(req.server.data_path, "logs", "klippy.log")
    return _log_download(req, path)


@blueprint.endpoint("/server/files/moonraker.log", ["GET"], rpc="")
def files_moonraker_log(req: ApiRequest) -> flask.Response:
    """web_api.md "Download moonraker.log"."""
    path = getattr(req.server.logs, "log_file", None) or getattr(req.server.logs, "path", None)
    if not path:
        path = os.path.join(req.server.data_path, "logs", "moonraker.log")
    return _log_download(req, path)


@blueprint.endpoint("/server/files/upload", ["POST"], rpc="", wrap=False)
def files_upload(req: ApiRequest) -> flask.Response:
    """web_api.md "File upload": 201 with the unwrapped result."""
    result = _fm(req).handle_upload(req.http)
    result.pop("_fields", None)
    return json_response(result, 201)
