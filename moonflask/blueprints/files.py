"""Endpoints of the files API group.  Spec: web_api.md "File Operations".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
import mimetypes
import os
from typing import Any

import flask

from ..api import ALL_TRANSPORTS, HTTP, ApiBlueprint, ApiRequest, json_response
from ..components.file_manager.manager import FileManager

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("files", __name__)

NON_HTTP = ALL_TRANSPORTS - {HTTP}
TEXT_EXTENSIONS = (".gcode", ".g", ".gco", ".nc", ".cfg", ".conf", ".log", ".txt", ".md",
                   ".json", ".yaml", ".yml", ".sh", ".py", ".ini")


def _fm(req: ApiRequest) -> FileManager:
    return req.server.lookup_component("file_manager")


# -- endpoints -----------------------------------------------------------------
@blueprint.endpoint("/server/files/list", ["GET"])
def files_list(req: ApiRequest) -> list[dict[str, Any]]:
    """web_api.md "List available files"."""
    return _fm(req).list_files(req.args.get_str("root", "gcodes"))


@blueprint.endpoint("/server/files/roots", ["GET"])
def files_roots(req: ApiRequest) -> list[dict[str, Any]]:
    """web_api.md "List registered roots"."""
    return [r.info() for r in _fm(req).roots.values()]


@blueprint.endpoint("/server/files/metadata", ["GET"])
def files_metadata(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Get GCode Metadata"."""
    return _fm(req).metadata_of(req.args.get_str("filename"))


@blueprint.endpoint("/server/files/metascan", ["GET", "POST"], rpc="server.files.metascan")
def files_metascan(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Scan GCode Metadata" (forces a rescan)."""
    return _fm(req).rescan(req.args.get_str("filename"))


@blueprint.endpoint("/server/files/thumbnails", ["GET"])
def files_thumbnails(req: ApiRequest) -> list[dict[str, Any]]:
    """web_api.md "Get GCode Thumbnails": paths relative to ``gcodes``."""
    return _fm(req).thumbnails_of(req.args.get_str("filename"))


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
    view = req.http.view_args or {}
    full = _fm(req).download_path(view.get("root", ""), view.get("filename", ""))
    return send_path(full, os.path.basename(full))


@blueprint.endpoint("/server/files/klippy.log", ["GET"], rpc="")
def files_klippy_log(req: ApiRequest) -> flask.Response:
    """web_api.md "Download klippy.log" (Klippy's ``log_file``)."""
    path = _fm(req).log_path("klippy")
    return send_path(path, os.path.basename(path))


@blueprint.endpoint("/server/files/moonraker.log", ["GET"], rpc="")
def files_moonraker_log(req: ApiRequest) -> flask.Response:
    """web_api.md "Download moonraker.log"."""
    path = _fm(req).log_path("moonraker")
    return send_path(path, os.path.basename(path))


@blueprint.endpoint("/server/files/upload", ["POST"], rpc="", wrap=False)
def files_upload(req: ApiRequest) -> flask.Response:
    """web_api.md "File upload": 201 with the unwrapped result."""
    result = _fm(req).handle_upload(req.http)
    result.pop("_fields", None)
    return json_response(result, 201)
