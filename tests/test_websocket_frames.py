"""The websocket session read by moonflask itself (connections.WebsocketConnection.serve):
fragmented messages, pings, binary frames, the close handshake, and a client
that sends garbage.  Spec: web_api.md "Websocket Connections" (RFC 6455 framing).
"""
from __future__ import annotations

import json
import os
import socket
import sys

import websocket
from websocket import ABNF

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _connect(server) -> websocket.WebSocket:
    return websocket.create_connection(server.ws_url, timeout=30)


def _reply(ws, req_id):
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == req_id:
            return msg


def test_fragmented_message_is_one_request(server):
    ws = _connect(server)
    text = json.dumps({"jsonrpc": "2.0", "method": "server.info", "id": 7})
    parts = [text[:5], text[5:20], text[20:]]
    ws.send_frame(ABNF.create_frame(parts[0], ABNF.OPCODE_TEXT, fin=0))
    ws.send_frame(ABNF.create_frame(parts[1], ABNF.OPCODE_CONT, fin=0))
    ws.send_frame(ABNF.create_frame(parts[2], ABNF.OPCODE_CONT, fin=1))
    reply = _reply(ws, 7)
    assert reply["result"]["klippy_state"] == "ready"
    ws.close()


def test_binary_frame_and_ping(server):
    ws = _connect(server)
    ws.ping(b"hello")
    op, data = ws.recv_data(control_frame=True)
    assert (op, data) == (ABNF.OPCODE_PONG, b"hello")
    ws.send_binary(json.dumps({"jsonrpc": "2.0", "method": "server.info", "id": 8}).encode())
    assert _reply(ws, 8)["result"]["klippy_state"] == "ready"
    ws.close()


def test_close_handshake_is_answered(server):
    ws = _connect(server)
    ws.send_close(status=1000, reason=b"bye")
    op, data = ws.recv_data(control_frame=True)
    assert op == ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1000
    # the server then closes the TCP connection
    ws.sock.settimeout(30)
    assert ws.sock.recv(16) == b""
    ws.shutdown()


def test_garbage_ends_that_session_only(server):
    ws = _connect(server)
    other = _connect(server)
    ws.sock.sendall(b"\x8f\x05hello")     # an unmasked frame with a reserved opcode
    ws.sock.settimeout(30)
    try:
        while ws.sock.recv(4096):
            pass                       # a close frame, if any, then EOF
    except (ConnectionResetError, socket.timeout):
        raise AssertionError("the server did not close the broken session")
    other.send(json.dumps({"jsonrpc": "2.0", "method": "server.info", "id": 9}))
    assert _reply(other, 9)["result"]["websocket_count"] >= 1
    other.close()
