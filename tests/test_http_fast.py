"""The HTTP fast path (moonflask/http_fast.py) answers as the Flask path does.

Each request is sent twice to the same real server: once plainly, which the
fast path serves, and once with an ``Origin`` header, which sends it through
Flask (no ``cors_domains`` is configured, so the header changes nothing else).
Status, content type and body must be the same: arguments with type hints and
JSON bodies, malformed bodies, missing keys, Klippy queries, authentication
from an untrusted address (no credentials, a wrong and a right API key), and a
public endpoint.
"""
from __future__ import annotations

import os
import sys

import pytest
import requests
from requests.adapters import HTTPAdapter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[authorization]
trusted_clients:
  127.0.0.1/32
"""
VIA_FLASK = {"Origin": "http://elsewhere.invalid"}


class _Source(HTTPAdapter):
    def init_poolmanager(self, *a, **kw):
        kw["source_address"] = ("127.0.0.2", 0)   # not a trusted client
        super().init_poolmanager(*a, **kw)


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(config=CONFIG)


def both(srv, method: str, path: str, session=None, **kw):
    """The (fast, flask) responses of one request."""
    http = session or requests
    headers = dict(kw.pop("headers", {}))
    fast = http.request(method, srv.url + path, headers=headers, timeout=30, **kw)
    flask = http.request(method, srv.url + path, headers={**headers, **VIA_FLASK},
                         timeout=30, **kw)
    return fast, flask


def assert_same(fast, flask, status: int) -> None:
    assert fast.status_code == flask.status_code == status, (fast.text, flask.text)
    assert fast.headers["Content-Type"] == flask.headers["Content-Type"]
    assert fast.headers["Content-Type"].startswith("application/json")
    assert _stable(fast.json()) == _stable(flask.json())


def _stable(body: dict) -> dict:
    """``body`` without Klippy's ``eventtime``, which moves between two calls."""
    result = body.get("result")
    if isinstance(result, dict):
        result = {k: v for k, v in result.items() if k != "eventtime"}
        return {**body, "result": result}
    return body


CASES = [
    ("GET", "/server/info", {}, 200),
    ("GET", "/server/config", {}, 200),
    ("GET", "/server/files/roots", {}, 200),
    ("GET", "/printer/objects/list", {}, 200),
    ("GET", "/printer/objects/query?toolhead=homed_axes,max_velocity", {}, 200),
    ("GET", "/printer/objects/query?objects=toolhead", {}, 200),     # plain-text objects
    ("GET", "/printer/objects/query?objects:json=%7B%22toolhead%22%3Anull%7D", {}, 200),
    ("GET", "/printer/objects/query", {}, 200),
    ("POST", "/printer/objects/query", {"json": {"objects": {"webhooks": None}}}, 200),
    ("GET", "/server/database/item?namespace=nope&key=x", {}, 404),
    ("GET", "/server/database/item?namespace=fast&key:int=5", {}, 400),
    ("POST", "/server/database/item", {"data": "{bad",
                                       "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/server/database/item", {"data": "[1, 2]",
                                       "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/server/database/item?namespace=fast", {"json": {"key": "k"}}, 400),
    ("GET", "/server/files/metadata?filename=missing.gcode", {}, 404),
    ("GET", "/server/files/list?root=nope", {}, 400),
    ("POST", "/server/info", {}, 405),            # a wrong verb: Flask's answer both times
    ("GET", "/server/info/", {}, 404),
]


@pytest.mark.parametrize("method,path,kw,status", CASES,
                         ids=[f"{m} {p}" for m, p, _, _ in CASES])
def test_same_answer(srv, method, path, kw, status):
    fast, flask = both(srv, method, path, **kw)
    assert_same(fast, flask, status)


def test_database_writes_through_both_paths(srv):
    for headers in ({}, VIA_FLASK):
        r = requests.post(srv.url + "/server/database/item", headers=headers, timeout=30,
                          json={"namespace": "fast", "key": "a.b", "value": {"n": 1}})
        assert r.status_code == 200, r.text
        assert r.json()["result"] == {"namespace": "fast", "key": "a.b", "value": {"n": 1}}
        fast, flask = both(srv, "GET", "/server/database/item?namespace=fast&key=a")
        assert_same(fast, flask, 200)
        assert fast.json()["result"]["value"] == {"b": {"n": 1}}
        r = requests.delete(srv.url + "/server/database/item?namespace=fast&key=a",
                            headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        fast, flask = both(srv, "GET", "/server/database/item?namespace=fast&key=a")
        assert_same(fast, flask, 404)


def test_type_hints_and_body_precedence(srv):
    r = requests.post(srv.url + "/server/database/item?namespace=fast&key=n&value:int=7",
                      timeout=30)
    assert r.status_code == 200 and r.json()["result"]["value"] == 7, r.text
    # a JSON body wins over the query string
    r = requests.post(srv.url + "/server/database/item?namespace=fast&key=n&value:int=7",
                      json={"value": "body"}, timeout=30)
    assert r.status_code == 200 and r.json()["result"]["value"] == "body", r.text
    fast, flask = both(srv, "GET", "/server/database/item?namespace=fast&key=n")
    assert_same(fast, flask, 200)
    assert fast.json()["result"]["value"] == "body"


def test_untrusted_client(srv):
    s = requests.Session()
    s.mount("http://", _Source())
    assert_same(*both(srv, "GET", "/server/info", session=s), 401)
    assert_same(*both(srv, "GET", "/server/info", session=s,
                      headers={"X-Api-Key": "wrong"}), 401)
    assert_same(*both(srv, "GET", "/access/info", session=s), 200)     # public
    key = requests.get(srv.url + "/access/api_key", timeout=30).json()["result"]
    fast, flask = both(srv, "GET", "/server/info", session=s, headers={"X-Api-Key": key})
    assert_same(fast, flask, 200)
    assert fast.json()["result"]["klippy_state"] == "ready"
