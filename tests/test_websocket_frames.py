"""The websocket session read by moonflask itself (connections.WebsocketConnection.serve):
fragmented messages, pings, binary frames, the close handshake, and a client
that sends garbage.  Spec: web_api.md "Websocket Connections" (RFC 6455 framing).
"""
from __future__ import annotations

import json
import os
import socket
import time
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


def test_permessage_deflate_client(server):
    """A browser-like client that offers permessage-deflate gets compressed
    frames, replies and broadcasts alike, that decompress to the messages."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    client = WSConnection(ConnectionType.CLIENT)
    sock.sendall(client.send(Request(host="127.0.0.1", target="/websocket",
                                     extensions=[PerMessageDeflate()])))
    messages: list[dict] = []
    accepted = None
    compressed = []

    def pump(until) -> None:
        nonlocal accepted
        while not until():
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            if accepted is not None and data[0] & 0x40:   # RSV1: a compressed frame
                compressed.append(data[0])
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, AcceptConnection):
                    accepted = event
                elif isinstance(event, TextMessage):
                    messages.append(json.loads(event.data))

    pump(lambda: accepted is not None)
    assert [type(e).__name__ for e in accepted.extensions] == ["PerMessageDeflate"]
    sock.sendall(client.send(TextMessage(data=json.dumps(
        {"jsonrpc": "2.0", "method": "server.info", "id": 1}))))
    pump(lambda: any(m.get("id") == 1 for m in messages))
    # a broadcast: a gcode response to every connection
    token = "deflate-check"
    r = server.post("/printer/gcode/script", json={"script": f"M118 {token}"})
    assert r.status_code == 200, r.text
    pump(lambda: any(m.get("method") == "notify_gcode_response"
                     and token in json.dumps(m) for m in messages))
    assert compressed, "no compressed frame arrived"
    sock.close()


def test_broadcast_reaches_every_client_in_order(server):
    clients = [_connect(server) for _ in range(20)]
    for i in range(5):
        r = server.post("/printer/gcode/script", json={"script": f"M118 order-{i}"})
        assert r.status_code == 200, r.text
    for ws in clients:
        seen = []
        while len(seen) < 5:
            msg = json.loads(ws.recv())
            if msg.get("method") == "notify_gcode_response":
                text = msg["params"][0]
                if "order-" in text:
                    seen.append(text.split("order-")[1])
        assert seen == ["0", "1", "2", "3", "4"]
        ws.close()


def _client_frame(data, opcode=ABNF.OPCODE_TEXT, fin=1) -> bytes:
    """A masked client frame, as websocket-client encodes it."""
    return ABNF.create_frame(data, opcode, fin=fin).format()


def test_split_simple_frames_matches_the_encoding():
    from moonflask.connections import split_simple_frames

    texts = ["", "a", "é" * 60, "x" * 125, "y" * 126, "z" * 65535]
    data = b"".join(_client_frame(t) for t in texts) + _client_frame(b"\x00\xff", ABNF.OPCODE_BINARY)
    data += _client_frame(b"hi", ABNF.OPCODE_PING) + _client_frame(b"", ABNF.OPCODE_PONG)
    frames, used, simple = split_simple_frames(data)
    assert simple and used == len(data)
    assert frames == [(1, t) for t in texts] + [(2, b"\x00\xff"), (9, b"hi"), (10, b"")]
    # an incomplete frame is left for the next read, at every cut
    one = _client_frame("w" * 300)
    for cut in range(len(one)):
        assert split_simple_frames(one[:cut]) == ([], 0, True)
    # what is not simple is left to wsproto, from its first byte
    others = (_client_frame("q" * 65536),                  # a 64-bit length
              _client_frame("part", fin=0),               # a fragment
              _client_frame(b"\x03\xe8", ABNF.OPCODE_CLOSE),
              _client_frame(b"\xff\xfe", ABNF.OPCODE_TEXT),  # text that is not UTF-8
              b"\x81\x05hello")                            # not masked
    ok = _client_frame("ok")
    for other in others:
        assert split_simple_frames(ok + other) == ([(1, "ok")], len(ok), False)


def test_frames_across_reads_and_a_long_frame(server):
    ws = _connect(server)
    req = json.dumps({"jsonrpc": "2.0", "method": "server.info", "id": 21}).encode()
    frame = _client_frame(req.decode())
    for i in range(len(frame)):                 # one byte per TCP write
        ws.sock.sendall(frame[i:i + 1])
        time.sleep(0.002)
    assert _reply(ws, 21)["result"]["klippy_state"] == "ready"
    # a frame longer than 64 KiB is read by wsproto, and so is all after it
    big = json.dumps({"jsonrpc": "2.0", "method": "server.info",
                      "params": {"pad": "p" * 70000}, "id": 22})
    ws.send(big)
    assert _reply(ws, 22)["result"]["klippy_state"] == "ready"
    ws.send(json.dumps({"jsonrpc": "2.0", "method": "server.info", "id": 23}))
    ws.ping(b"after")
    assert _reply(ws, 23)["result"]["klippy_state"] == "ready"
    ws.close()
