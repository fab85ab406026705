#!/usr/bin/env python3
"""Capture the reference Moonraker's database and authorization behaviour as
fixtures ``tests/reference/db_*.json`` and ``tests/reference/auth_*.json``.

Runs the reference (``moonraker==0.11.0``, black box) without Klippy, with
``[authorization] trusted_clients: 127.0.0.1/32`` so that a client whose
socket is bound to 127.0.0.2 is NOT trusted while 127.0.0.1 is, and with
``-g`` so the ``debug.database.*`` endpoints exist.  The file format is the
one of scripts/capture_reference.py.

    .venv/bin/python scripts/capture_auth_db_reference.py \
        [--reference-python .reference-venv/bin/python] [--out tests/reference]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import requests
import websocket
from requests.adapters import HTTPAdapter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
import capture_reference as cr  # noqa: E402

UNTRUSTED = "127.0.0.2"


class SourceAdapter(HTTPAdapter):
    """A requests adapter whose sockets are bound to a given source address."""

    def __init__(self, source: str, **kw):
        self.source = source
        super().__init__(**kw)

    def init_poolmanager(self, *a, **kw):
        kw["source_address"] = (self.source, 0)
        super().init_poolmanager(*a, **kw)


def session(source: str | None) -> requests.Session:
    s = requests.Session()
    if source:
        s.mount("http://", SourceAdapter(source))
    return s


def ws_connect(url: str, source: str | None = None, origin: str | None = None):
    """A websocket-client connection, optionally from ``source``."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket()
    if source:
        sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, int(port)))
    kw = {"origin": origin} if origin else {}
    return websocket.create_connection(url, socket=sock, timeout=10, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Capture:
    def __init__(self, out: str, url: str):
        self.out = out
        self.url = url
        self.count = 0

    def save(self, name: str, data: dict) -> None:
        data = {"name": name, **data}
        with open(os.path.join(self.out, name + ".json"), "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
        self.count += 1

    def http(self, name: str, s: requests.Session, method: str, path: str, **kw) -> dict:
        resp = s.request(method, self.url + path, timeout=10, **kw)
        try:
            body = resp.json()
        except ValueError:
            body = {"raw": resp.text}
        req = {"method": method, "path": path}
        for k in ("json", "params", "headers"):
            if k in kw:
                req[k] = kw[k]
        rec = {"transport": "http", "request": req, "status": resp.status_code,
               "headers": [[k, v] for k, v in resp.headers.items()], "body": body,
               "notifications": [], "reason": resp.reason}
        if name:
            self.save(name, rec)
        return rec

    def rpc(self, name: str, ws, method: str, params: dict | None = None) -> dict:
        self.count += 0
        req_id = int(time.monotonic() * 1000) % 100000
        msg = {"jsonrpc": "2.0", "method": method, "id": req_id}
        if params is not None:
            msg["params"] = params
        ws.send(json.dumps(msg))
        notes = []
        while True:
            reply = json.loads(ws.recv())
            if reply.get("id") == req_id:
                break
            if reply.get("method") != "notify_proc_stat_update":
                notes.append(reply)
        rec = {"transport": "websocket", "request": msg, "status": None, "headers": [],
               "body": reply, "notifications": notes}
        if name:
            self.save(name, rec)
        return rec


def write_conf(path: str, port: int, klippy: str, extra: str = "") -> None:
    with open(path, "w") as fh:
        fh.write(f"""[server]
host: 0.0.0.0
port: {port}
klippy_uds_address: {klippy}

[authorization]
trusted_clients:
  127.0.0.1/32
cors_domains:
  http://example.com
  *.allowed.org
{extra}
""")


def start_ref(python: str, data: str, port: int) -> subprocess.Popen:
    log = open(os.path.join(data, "ref.stdout"), "ab")
    proc = subprocess.Popen([python, "-m", "moonraker", "-d", data, "-g",
                             "-c", os.path.join(data, "config", "moonraker.conf"),
                             "-l", os.path.join(data, "logs", "moonraker.log")],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/server/info", timeout=1)
            return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("reference did not start")


def capture(cap: Capture, url: str, data: str) -> None:
    trusted = session(None)
    untrusted = session(UNTRUSTED)
    ws_url = url.replace("http", "ws") + "/websocket"

    # -- database ----------------------------------------------------------
    h = cap.http
    h("db_list", trusted, "GET", "/server/database/list")
    h("db_get_missing_namespace", trusted, "GET", "/server/database/item",
      params={"namespace": "fluidd"})
    h("db_post_nested", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": "settings.console.autocomplete", "value": True})
    h("db_post_array_key", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": ["dotted.key", "x"], "value": {"a": [1, 2]}})
    h("db_get_namespace", trusted, "GET", "/server/database/item",
      params={"namespace": "capt"})
    h("db_get_nested", trusted, "GET", "/server/database/item",
      params={"namespace": "capt", "key": "settings.console"})
    h("db_get_array_key", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": ["dotted.key", "x", "a"], "value": 5})
    h("db_get_array_key_json_hint", trusted, "GET",
      "/server/database/item?namespace=capt&key:json=" + '["dotted.key","x"]')
    h("db_get_missing_key", trusted, "GET", "/server/database/item",
      params={"namespace": "capt", "key": "nope.deeper"})
    h("db_get_key_in_scalar", trusted, "GET", "/server/database/item",
      params={"namespace": "capt", "key": "settings.console.autocomplete.x"})
    h("db_post_hint_int", trusted, "POST",
      "/server/database/item?namespace=capt&key=count&value:int=100")
    h("db_post_hint_float", trusted, "POST",
      "/server/database/item?namespace=capt&key=ratio&value:float=2.5")
    h("db_post_hint_bool", trusted, "POST",
      "/server/database/item?namespace=capt&key=flag&value:bool=true")
    h("db_post_hint_json", trusted, "POST",
      "/server/database/item?namespace=capt&key=obj&value:json=" + '{"x":[1,{"y":null}]}')
    h("db_post_string", trusted, "POST",
      "/server/database/item?namespace=capt&key=text&value=hello")
    h("db_post_no_key", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "value": 1})
    h("db_post_no_value", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": "a"})
    h("db_post_no_namespace", trusted, "POST", "/server/database/item",
      json={"key": "a", "value": 1})
    h("db_post_empty_key", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": "", "value": 1})
    h("db_post_bad_key_type", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": 5, "value": 1})
    h("db_post_key_list_with_int", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": ["a", 5], "value": 1})
    h("db_post_into_scalar", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": "count.sub", "value": 1})
    h("db_post_null_value", trusted, "POST", "/server/database/item",
      json={"namespace": "capt", "key": "nothing", "value": None})
    h("db_delete_item", trusted, "DELETE", "/server/database/item",
      params={"namespace": "capt", "key": "count"})
    h("db_delete_missing", trusted, "DELETE", "/server/database/item",
      params={"namespace": "capt", "key": "count"})
    h("db_delete_missing_namespace", trusted, "DELETE", "/server/database/item",
      params={"namespace": "nonexistent_ns", "key": "count"})
    h("db_post_moonraker", trusted, "POST", "/server/database/item",
      json={"namespace": "moonraker", "key": "x", "value": 1})
    h("db_post_history", trusted, "POST", "/server/database/item",
      json={"namespace": "history", "key": "x", "value": 1})
    h("db_delete_moonraker", trusted, "DELETE", "/server/database/item",
      params={"namespace": "moonraker", "key": "x"})
    h("db_get_moonraker", trusted, "GET", "/server/database/item",
      params={"namespace": "moonraker"})
    h("db_get_authorized_users", trusted, "GET", "/server/database/item",
      params={"namespace": "authorized_users"})
    h("db_post_authorized_users", trusted, "POST", "/server/database/item",
      json={"namespace": "authorized_users", "key": "x", "value": 1})
    h("db_list_after", trusted, "GET", "/server/database/list")
    h("db_debug_list", trusted, "GET", "/debug/database/list")
    h("db_debug_get_authorized_users", trusted, "GET", "/debug/database/item",
      params={"namespace": "authorized_users"})
    h("db_debug_post_moonraker", trusted, "POST", "/debug/database/item",
      json={"namespace": "moonraker", "key": "mf_test", "value": 1})
    h("db_debug_delete_moonraker", trusted, "DELETE", "/debug/database/item",
      params={"namespace": "moonraker", "key": "mf_test"})
    # emptying a namespace drops it
    h(None, trusted, "POST", "/server/database/item",
      json={"namespace": "ephemeral", "key": "only", "value": 1})
    h("db_delete_last_key", trusted, "DELETE", "/server/database/item",
      params={"namespace": "ephemeral", "key": "only"})
    h("db_list_after_drop", trusted, "GET", "/server/database/list")
    ws = ws_connect(ws_url)
    r = cap.rpc
    r("db_rpc_get_missing_namespace", ws, "server.database.get_item", {"namespace": "fluidd"})
    r("db_rpc_post_item", ws, "server.database.post_item",
      {"namespace": "capt", "key": "rpc.a", "value": [1, 2, 3]})
    r("db_rpc_get_item", ws, "server.database.get_item", {"namespace": "capt", "key": "rpc"})
    r("db_rpc_list", ws, "server.database.list")
    r("db_rpc_delete_item", ws, "server.database.delete_item",
      {"namespace": "capt", "key": "rpc.a"})
    r("db_rpc_get_missing_key", ws, "server.database.get_item",
      {"namespace": "capt", "key": "rpc.a"})
    r("db_rpc_post_protected", ws, "server.database.post_item",
      {"namespace": "gcode_metadata", "key": "a", "value": 1})
    r("db_rpc_get_forbidden", ws, "server.database.get_item",
      {"namespace": "authorized_users"})
    r("db_rpc_debug_list", ws, "debug.database.list")
    ws.close()

    # -- authorization -----------------------------------------------------
    h("auth_info_untrusted", untrusted, "GET", "/access/info")
    h("auth_server_info_untrusted", untrusted, "GET", "/server/info")
    h("auth_db_list_untrusted", untrusted, "GET", "/server/database/list")
    h("auth_get_user_untrusted", untrusted, "GET", "/access/user")
    h("auth_get_user_trusted", trusted, "GET", "/access/user")
    h("auth_users_list_empty", trusted, "GET", "/access/users/list")
    key = h("auth_get_api_key", trusted, "GET", "/access/api_key")["body"]["result"]
    h("auth_get_api_key_untrusted", untrusted, "GET", "/access/api_key")
    # user creation from an untrusted client without credentials
    h("auth_post_user_untrusted", untrusted, "POST", "/access/user",
      json={"username": "mallory", "password": "x"})
    ws_tr = ws_connect(ws_url)
    ws_tr.send(json.dumps({"jsonrpc": "2.0", "method": "server.connection.identify",
                           "params": {"client_name": "cap", "version": "1", "type": "web",
                                      "url": "http://x"}, "id": 1}))
    ws_tr.recv()
    cap.rpc("auth_rpc_post_user", ws_tr, "access.post_user",
                      {"username": "alice", "password": "secret1"})
    h("auth_post_user_exists", trusted, "POST", "/access/user",
      json={"username": "alice", "password": "other"})
    h("auth_post_user_reserved", trusted, "POST", "/access/user",
      json={"username": "_TRUSTED_USER_", "password": "other"})
    h("auth_post_user_no_password", trusted, "POST", "/access/user",
      json={"username": "bob"})
    h("auth_post_user_http", trusted, "POST", "/access/user",
      json={"username": "bob", "password": "bobpass"})
    h("auth_users_list", trusted, "GET", "/access/users/list")
    # login
    h("auth_login_bad_password", untrusted, "POST", "/access/login",
      json={"username": "alice", "password": "wrong"})
    h("auth_login_unknown_user", untrusted, "POST", "/access/login",
      json={"username": "nobody", "password": "wrong"})
    h("auth_login_bad_source", untrusted, "POST", "/access/login",
      json={"username": "alice", "password": "secret1", "source": "ldap"})
    h("auth_login_get", untrusted, "GET", "/access/login")
    login = h("auth_login", untrusted, "POST", "/access/login",
              json={"username": "alice", "password": "secret1"})["body"]["result"]
    tok, refresh = login["token"], login["refresh_token"]
    bearer = {"Authorization": f"Bearer {tok}"}
    h("auth_get_user_bearer", untrusted, "GET", "/access/user", headers=bearer)
    h("auth_server_info_bearer", untrusted, "GET", "/server/info", headers=bearer)
    h("auth_server_info_access_token_arg", untrusted, "GET",
      "/server/info?access_token=" + tok)
    h("auth_server_info_bad_token", untrusted, "GET", "/server/info",
      headers={"Authorization": "Bearer abc.def.ghi"})
    h("auth_server_info_refresh_as_access", untrusted, "GET", "/server/info",
      headers={"Authorization": f"Bearer {refresh}"})
    h("auth_server_info_api_key", untrusted, "GET", "/server/info",
      headers={"X-Api-Key": key})
    h("auth_server_info_bad_api_key", untrusted, "GET", "/server/info",
      headers={"X-Api-Key": "0" * 32})
    h("auth_get_user_api_key", untrusted, "GET", "/access/user", headers={"X-Api-Key": key})
    one = h("auth_oneshot_token", untrusted, "GET", "/access/oneshot_token",
            headers=bearer)["body"]["result"]
    h("auth_server_info_oneshot", untrusted, "GET", "/server/info?token=" + one)
    h("auth_server_info_oneshot_reused", untrusted, "GET", "/server/info?token=" + one)
    h("auth_refresh_jwt", untrusted, "POST", "/access/refresh_jwt",
      json={"refresh_token": refresh})
    h("auth_refresh_jwt_with_access", untrusted, "POST", "/access/refresh_jwt",
      json={"refresh_token": tok})
    h("auth_refresh_jwt_bad", untrusted, "POST", "/access/refresh_jwt",
      json={"refresh_token": "garbage"})
    h("auth_password_wrong", untrusted, "POST", "/access/user/password", headers=bearer,
      json={"password": "nope", "new_password": "secret2"})
    h("auth_password", untrusted, "POST", "/access/user/password", headers=bearer,
      json={"password": "secret1", "new_password": "secret2"})
    h("auth_password_trusted", trusted, "POST", "/access/user/password",
      json={"password": "secret1", "new_password": "secret2"})
    h("auth_delete_self", untrusted, "DELETE", "/access/user", headers=bearer,
      json={"username": "alice"})
    h("auth_delete_unknown", trusted, "DELETE", "/access/user", json={"username": "zed"})
    h("auth_delete_trusted_user", trusted, "DELETE", "/access/user",
      json={"username": "_TRUSTED_USER_"})
    # websocket auth
    try:
        ws_un = ws_connect(ws_url + "?token=" + h(
            None, untrusted, "GET", "/access/oneshot_token", headers=bearer)["body"]["result"],
            UNTRUSTED)
        r("auth_ws_oneshot_get_user", ws_un, "access.get_user")
        ws_un.close()
    except Exception as err:
        print("ws oneshot failed:", err)
    try:
        ws_un = ws_connect(ws_url + "?access_token=" + tok, UNTRUSTED)
        r("auth_ws_access_token_query", ws_un, "access.get_user")
        ws_un.close()
    except Exception as err:
        print("ws access_token query failed:", err)
    ws_un = ws_connect(ws_url, UNTRUSTED)
    r("auth_ws_untrusted_server_info", ws_un, "server.info")
    r("auth_ws_untrusted_access_info", ws_un, "access.info")
    r("auth_ws_untrusted_identify_bad_token", ws_un, "server.connection.identify",
      {"client_name": "cap", "version": "1", "type": "web", "url": "http://x",
       "access_token": "abc"})
    r("auth_ws_untrusted_identify_token", ws_un, "server.connection.identify",
      {"client_name": "cap", "version": "1", "type": "web", "url": "http://x",
       "access_token": tok})
    r("auth_ws_after_identify_server_info", ws_un, "access.get_user")
    r("auth_ws_logout", ws_un, "access.logout")
    r("auth_ws_after_logout", ws_un, "server.info")
    ws_un.close()
    ws_un = ws_connect(ws_url, UNTRUSTED)
    r("auth_ws_login", ws_un, "access.login", {"username": "bob", "password": "bobpass"})
    r("auth_ws_after_login_get_user", ws_un, "access.get_user")
    ws_un.close()
    ws_un = ws_connect(ws_url, UNTRUSTED)
    r("auth_ws_identify_api_key", ws_un, "server.connection.identify",
      {"client_name": "cap", "version": "1", "type": "web", "url": "http://x",
       "api_key": key})
    r("auth_ws_api_key_get_user", ws_un, "access.get_user")
    ws_un.close()
    # websocket origin checks
    for name, origin, src in (
            ("allowed", "http://example.com", UNTRUSTED),
            ("wild", "http://a.allowed.org", UNTRUSTED),
            ("evil", "http://evil.example.org", UNTRUSTED),
            ("trusted_evil", "http://evil.example.org", None),
            ("trusted_host_ip", "http://127.0.0.1:8080", None),
            ("trusted_allowed", "http://example.com", None)):
        try:
            w = ws_connect(ws_url, src, origin)
            cap.save(f"auth_ws_origin_{name}", {"transport": "websocket",
                                                  "request": {"origin": origin},
                                                  "status": 101, "body": None})
            w.close()
        except websocket.WebSocketBadStatusException as err:
            cap.save(f"auth_ws_origin_{name}", {
                "transport": "websocket", "request": {"origin": origin},
                "status": err.status_code, "body": {"raw": err.resp_body.decode()
                                                    if err.resp_body else None}})
    # CORS
    for name, origin in (("allowed", "http://example.com"), ("wild", "https://x.allowed.org"),
                         ("disallowed", "http://evil.example.org")):
        h(f"auth_cors_preflight_{name}", untrusted, "OPTIONS", "/server/info",
          headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        h(f"auth_cors_get_{name}", untrusted, "GET", "/server/info",
          headers={"Origin": origin, "X-Api-Key": key})
    h("auth_cors_401_allowed", untrusted, "GET", "/server/info",
      headers={"Origin": "http://example.com"})
    # logout, notifications
    h("auth_logout_bearer", untrusted, "POST", "/access/logout",
      headers={"Authorization": "Bearer " + h(None, untrusted, "POST", "/access/login", json={
          "username": "bob", "password": "bobpass"})["body"]["result"]["token"]})
    h("auth_logout_trusted", trusted, "POST", "/access/logout")
    cap.rpc("auth_rpc_delete_user", ws_tr, "access.delete_user", {"username": "bob"})
    h("auth_post_api_key", trusted, "POST", "/access/api_key")
    h("auth_server_info_old_api_key", untrusted, "GET", "/server/info",
      headers={"X-Api-Key": key})
    h("auth_login_deleted_user", untrusted, "POST", "/access/login",
      json={"username": "bob", "password": "bobpass"})
    ws_tr.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    cr.reference_arguments(p, klippy=False)
    args = p.parse_args(argv)
    data = tempfile.mkdtemp(prefix="mfref-")
    for sub in ("config", "logs", "gcodes", "database", "comms"):
        os.makedirs(os.path.join(data, sub))
    port = free_port()
    write_conf(os.path.join(data, "config", "moonraker.conf"), port,
               os.path.join(data, "comms", "klippy.sock"))
    proc = start_ref(args.reference_python, data, port)
    url = f"http://127.0.0.1:{port}"
    cap = Capture(args.out, url)
    try:
        capture(cap, url, data)
    finally:
        proc.terminate()
        proc.wait(10)
    # how the reference stores users (for the importer / legacy password check)
    db = os.path.join(data, "database", "moonraker-sql.db")
    if os.path.exists(db):
        con = sqlite3.connect(db)
        rows = con.execute("select name from sqlite_master where type='table'").fetchall()
        print("tables:", rows)
        for (tbl,) in rows:
            cols = [c[1] for c in con.execute(f"pragma table_info({tbl})")]
            print(tbl, cols)
    print(f"{cap.count} fixtures written to {args.out}; data in {data}")
    if not args.keep:
        import shutil
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
