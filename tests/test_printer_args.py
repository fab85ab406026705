"""Issue 10 item 3: the arguments of printer.* endpoints are checked before
Klippy is asked.  Compared with the reference's answers recorded in
tests/reference/args_*.json (scripts/capture_args_db_config_reference.py):
with Klippy there, the same status and error; with Klippy away, where the
reference answers 503 before looking at the arguments, moonflask answers
the same 400 as with Klippy there (beyond the reference)."""
from __future__ import annotations

import os

import pytest

from capture_args_db_config_reference import ARG_CASES
from helpers import Moonflask
from shapes import reference, shape_diff

#: Where the reference's message says nothing useful ("Invalid argument",
#: or a 500 with a Python error), moonflask's names what is wrong.
EXPLAINED = {
    "query_fields_string": "toolhead", "query_fields_number": "toolhead",
    "query_fields_mixed": "toolhead", "subscribe_fields_string": "toolhead",
    "subscribe_objects_string": "Invalid Argument Type [objects]",
}


@pytest.fixture(scope="module")
def away(tmp_root):
    """A moonflask whose Klippy socket nobody listens on."""
    data = os.path.join(tmp_root, "printer_args_away")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    srv = Moonflask(data, os.path.join(data, "no-klippy.sock"))
    srv.start()
    yield srv
    srv.stop()


def _rpc(srv, method, params):
    client = srv.ws()
    try:
        return client.request(method, params)
    finally:
        client.close()


def _http(srv, verb, path, params):
    return srv.post(path, json=params) if verb == "POST" else srv.get(path, params=params)


def _check_error(name, ref_err, got_err):
    """``got_err`` ({code, message}) answers as ``ref_err`` does, or better
    where the reference's message explains nothing."""
    if name in EXPLAINED:
        assert got_err["code"] == 400, got_err
        assert EXPLAINED[name] in got_err["message"], got_err
    else:
        assert got_err == {"code": ref_err["code"], "message": ref_err["message"]}


@pytest.mark.parametrize("name,method,verb,path,params", ARG_CASES,
                         ids=[c[0] for c in ARG_CASES])
def test_arguments_checked_as_reference_with_klippy_there(server, name, method, verb, path,
                                                          params):
    ref = reference(f"args_rpc_{name}")["body"]
    got = _rpc(server, method, params)
    if "error" in ref:
        assert "error" in got, got
        _check_error(name, ref["error"], got["error"])
    else:
        assert shape_diff(ref, {**got, "id": ref["id"]}, free=("$.result.status",)) == []
        assert got["result"]["status"].keys() == ref["result"]["status"].keys()
    if not verb:
        return
    ref = reference(f"args_http_{name}")
    resp = _http(server, verb, path, params)
    assert resp.status_code == ref["status"], resp.text
    if "error" in ref["body"]:
        _check_error(name, ref["body"]["error"], resp.json()["error"])
    else:
        assert resp.json()["result"]["status"] == {"toolhead": {"position": [0.0, 0.0, 0.0, 0.0]}}


@pytest.mark.parametrize("name,method,verb,path,params", ARG_CASES,
                         ids=[c[0] for c in ARG_CASES])
def test_arguments_checked_before_klippy_when_it_is_away(away, name, method, verb, path,
                                                         params):
    """The reference answers 503 here (args_*_away); moonflask the 400 it
    gives with Klippy there, and 503 only to well-formed requests."""
    ref_away = reference(f"args_rpc_{name}_away")["body"]
    assert ref_away["error"]["code"] in (400, 503)
    ref = reference(f"args_rpc_{name}")["body"]
    got = _rpc(away, method, params)
    if "error" in ref:
        _check_error(name, ref["error"], got["error"])
    else:
        assert got["error"] == {"code": 503, "message": "Klippy Host not connected"}
    if not verb:
        return
    ref = reference(f"args_http_{name}")
    resp = _http(away, verb, path, params)
    if "error" in ref["body"]:
        assert resp.status_code == ref["status"], resp.text
        _check_error(name, ref["body"]["error"], resp.json()["error"])
    else:
        assert resp.status_code == 503
        assert resp.json()["error"]["message"] == "Klippy Host not connected"


def test_query_string_objects_names_an_object_as_reference(server):
    """``?objects=nope`` in the query string is the HTTP form: an object
    called ``objects`` with the field ``nope`` (as the reference queries it)."""
    ref = reference("args_http_query_string_objects")["body"]["result"]["status"]
    got = server.result("GET", "/printer/objects/query?objects=nope")["status"]
    assert got == ref == {"objects": {"nope": None}}


def test_query_string_and_hints_still_accepted(server):
    got = server.result("GET", "/printer/objects/query?toolhead=position&webhooks")
    assert set(got["status"]) == {"toolhead", "webhooks"}
    got = server.result("GET", '/printer/objects/query?objects:json={"toolhead":["position"]}')
    assert got["status"] == {"toolhead": {"position": [0.0, 0.0, 0.0, 0.0]}}
    resp = server.get("/printer/objects/query?objects:json=5")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "Invalid Argument Type [objects]"
