"""Live persistent connections: websockets and unix-socket clients.

Each connection has a bounded outbound queue drained by its own writer
greenlet, so a slow client never stalls a broadcast; a client whose queue
overflows is closed (DESIGN.md "Concurrency").  Incoming frames are executed
in a per-connection pool of greenlets, so a long ``G4 P10000`` does not hold
up the requests behind it.  Spec: web_api.md "Websocket Connections",
"Unix Socket Connection", server.md "Identify Connection".
"""
from __future__ import annotations

import logging
import random
import struct
from typing import Any, Iterator

import gevent
import gevent.lock
import gevent.queue

from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from .api import ApiError, UNIX, WEBSOCKET

log = logging.getLogger(__name__)

OUTBOUND_QUEUE_SIZE = 4096      # messages; a client this far behind is closed
OUTBOUND_QUEUE_BYTES = 8 << 20  # characters queued (8 MiB); likewise
REQUEST_CONCURRENCY = 64        # requests in flight per connection
PING_INTERVAL = 25.0            # seconds between websocket pings (a client silent for two is closed)
RECEIVE_BYTES = 65536           # bytes read from a websocket at once
CLOSE_GRACE = 5.0               # seconds a client has to answer our close frame
CLIENT_TYPES = ("web", "mobile", "desktop", "display", "bot", "agent", "other")


class Connection:
    """A persistent client connection.

    Attributes:
        uid: the connection id reported by ``server.connection.identify``
            and ``server.websocket.id`` (an int).
        transport: ``websocket`` or ``unix``.
        ip: the peer address (None for the unix socket).
        user: the authenticated user dict, or None.
        credentials_refused: the websocket upgrade presented invalid
            credentials: the address no longer counts as trusted.
        subscriptions: ``{object_name: [fields] | None}`` as last requested
            with ``printer.objects.subscribe``.
        client_name, version, client_type, url: from identify (None before).
    """

    transport = ""

    def __init__(self, manager: "ConnectionManager", ip: str | None = None,
                 user: dict | None = None) -> None:
        self.manager = manager
        self.server = manager.server
        self.uid = manager.new_uid()
        self.ip = ip
        self.user = user
        self.credentials_refused = False
        self.subscriptions: dict[str, list[str] | None] = {}
        self.identified = False
        self.client_name: str | None = None
        self.version: str | None = None
        self.client_type: str | None = None
        self.url: str | None = None
        self.closed = False
        self._queued = 0  # characters waiting in the queue
        self._queue: gevent.queue.Queue = gevent.queue.Queue(OUTBOUND_QUEUE_SIZE)
        self._slots = gevent.lock.BoundedSemaphore(REQUEST_CONCURRENCY)  # requests in flight
        self._write_lock = gevent.lock.Semaphore()  # one writer of the transport at a time
        self._writer = gevent.spawn(self._write_loop)

    # -- outbound --------------------------------------------------------
    def send_text(self, text: str, shared: dict[str, bytes] | None = None) -> None:
        """Send one encoded message without blocking the caller.

        When nothing is queued and no write is under way, the message is
        written at once with one non-blocking ``send`` from the caller's
        greenlet (no wake-up of the writer greenlet); what the socket did not
        take, or a message arriving while others wait, is queued for the
        writer.  Closes the connection when its queue is full (the client
        stopped reading).

        Args:
            shared: a broadcast's cache of the message's wire form by kind of
                transport (:meth:`wire_form`), so that it is framed once for
                every connection that can share it.
        """
        if self.closed:
            return
        item: str | bytes = text
        if not self._queue.qsize() and self._write_lock.acquire(blocking=False):
            try:
                data = self.wire_form(text, shared)
                sent = self.send_nowait(data)
            except Exception as err:
                log.info("connection %s write failed: %s", self.uid, err)
                self._write_lock.release()
                self.close()
                return
            self._write_lock.release()
            if sent == len(data):
                return
            item = data[sent:]          # the rest goes first, through the writer
        self._enqueue(item)

    def wire_form(self, text: str, shared: dict[str, bytes] | None = None) -> bytes:
        """The bytes that carry message ``text`` on this transport
        (subclasses), from ``shared`` when another connection made them."""
        raise NotImplementedError

    def transport_socket(self) -> Any:
        """The connection's gevent socket (subclasses), or None."""
        return None

    def send_nowait(self, data: bytes) -> int:
        """Write what the socket takes of ``data`` now, without waiting;
        returns the bytes written (0 when it would block, or when the socket
        is not gevent's).  Raises OSError when the connection is broken."""
        raw = getattr(self.transport_socket(), "_sock", None)   # gevent's: the OS socket
        if raw is None:
            return 0
        try:
            return raw.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def _enqueue(self, item: str | bytes) -> None:
        text = item
        try:
            if self._queued + len(text) > OUTBOUND_QUEUE_BYTES:
                raise gevent.queue.Full
            self._queue.put_nowait(text)
            self._queued += len(text)
        except gevent.queue.Full:
            log.warning("connection %s (%s) is not reading: queue full, closing",
                        self.uid, self.client_name or self.ip)
            self.close()

    def send_reply(self, text: str) -> None:
        """Write a reply now, from the request's own greenlet, when nothing is
        queued and no write is in progress (saves the hand-over to the writer
        greenlet); else queue it behind the rest, in order (:meth:`send_text`)."""
        if self.closed:
            return
        if self._queue.qsize() or not self._write_lock.acquire(blocking=False):
            self.send_text(text)
            return
        try:
            self.write(text)
        except Exception as err:
            log.info("connection %s write failed: %s", self.uid, err)
            self.close()
        finally:
            self._write_lock.release()

    def _write_loop(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            text = get()
            if text is None:
                return
            batch, done = [text], False
            # what else is queued goes out in the same write (one send)
            while len(batch) < 256:
                try:
                    more = get_nowait()
                except gevent.queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                batch.append(more)
            self._queued -= sum(map(len, batch))
            try:
                with self._write_lock:
                    if len(batch) == 1:
                        self.write(text)
                    else:
                        self.write_many(batch)
            except Exception as err:
                log.info("connection %s write failed: %s", self.uid, err)
                self.close()
                return
            if done:
                return

    def write(self, text: str) -> None:
        """Write one message to the peer (subclasses); may block."""
        raise NotImplementedError

    def write_many(self, texts: list[str]) -> None:
        """Write several messages, in order (subclasses write them in one send)."""
        for text in texts:
            self.write(text)

    def receives_notifications(self) -> bool:
        """True when broadcasts reach this connection: it is authenticated
        (``Authorization.connection_authenticated``)."""
        return self.server.auth.connection_authenticated(self)

    # -- inbound ---------------------------------------------------------
    def handle_frame(self, raw: bytes | str) -> None:
        """Execute one JSON-RPC frame in a greenlet of its own; the reply is
        written or queued.  Blocks the reader when REQUEST_CONCURRENCY are in
        flight.  A raw greenlet and a semaphore: a Pool's Greenlet objects,
        links and bookkeeping cost more than the dispatch of a quick call."""
        self._slots.acquire()
        gevent.spawn_raw(self._run_frame, raw)

    def _run_frame(self, raw: bytes | str) -> None:
        try:
            reply = self.server.jsonrpc.dispatch(raw, transport=self.transport,
                                                 connection=self, user=self.user, ip=self.ip)
            if reply is not None:
                self.send_reply(reply)
        except Exception:  # dispatch answers errors itself: this is a bug, keep serving
            log.exception("connection %s: request failed", self.uid)
        finally:
            self._slots.release()

    # -- identify --------------------------------------------------------
    def identify(self, client_name: str, version: str, client_type: str, url: str) -> None:
        """Record the client's identity (server.connection.identify).

        Raises ApiError 400 when already identified, when ``client_type`` is
        not one of CLIENT_TYPES, or when an agent of the same name is connected.
        """
        if self.identified:
            raise ApiError(f"Connection already identified: {self.info()}", 400)
        client_type = client_type.lower()
        if client_type not in CLIENT_TYPES:
            raise ApiError(f"Invalid Client Type: {client_type}", 400)
        if client_type == "agent":
            for other in self.manager.all():
                if (other is not self and other.client_type == "agent"
                        and other.client_name == client_name):
                    raise ApiError(f"Agent '{client_name}' is already connected", 400)
        self.client_name, self.version = client_name, version
        self.client_type, self.url = client_type, url
        self.identified = True
        self.server.events.emit("connection:identified", self)

    def info(self) -> dict[str, Any]:
        """``{"connection_id", "client_name", "version", "type", "url"}``."""
        return {"connection_id": self.uid, "client_name": self.client_name,
                "version": self.version, "type": self.client_type, "url": self.url}

    # -- lifetime --------------------------------------------------------
    def close(self) -> None:
        """Stop the writer, forget subscriptions, drop from the manager."""
        if self.closed:
            return
        self.closed = True
        try:
            self._queue.put_nowait(None)
        except gevent.queue.Full:
            self._writer.kill(block=False)
        self.manager.remove(self)
        self.close_transport()

    def close_transport(self) -> None:
        """Close the underlying socket (subclasses)."""


OP_TEXT, OP_BINARY, OP_PING, OP_PONG = 0x1, 0x2, 0x9, 0xA
SIMPLE_FRAME_MAX = 65535        # bytes: a longer payload is wsproto's to read


def split_simple_frames(data: bytes) -> tuple[list[tuple[int, Any]], int, bool]:
    """Read the client frames at the start of ``data`` that need no state
    (RFC 6455 section 5): masked, final, no RSV bit, a text (valid UTF-8),
    binary, ping or pong frame with a minimally encoded length of at most
    SIMPLE_FRAME_MAX bytes.  Nearly every frame of a client without
    permessage-deflate is one, and reading them here costs a fraction of
    wsproto's pure-Python parser (unmasking included).

    Returns ``(frames, used, simple)``: ``frames`` as ``(opcode, payload)``
    (text as ``str``), ``used`` the bytes they took; ``simple`` False when
    the frame at ``used`` is any other kind (fragment, close, extension,
    unmasked, invalid UTF-8, long, malformed): from there on, wsproto reads
    the connection (its parser then starts at a frame boundary, at a message
    boundary).  With ``simple`` True, ``data[used:]`` is the start of an
    incomplete frame."""
    frames: list[tuple[int, Any]] = []
    pos, end = 0, len(data)
    while end - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        opcode, length = b0 & 0x0F, b1 & 0x7F
        if b0 & 0xF0 != 0x80 or not b1 & 0x80 or opcode not in (OP_TEXT, OP_BINARY,
                                                               OP_PING, OP_PONG):
            return frames, pos, False
        head = pos + 2
        if length == 127 or (length == 126 and opcode >= OP_PING):
            return frames, pos, False
        if length == 126:
            if end - pos < 4:
                break
            length = int.from_bytes(data[head:head + 2], "big")
            if length < 126:             # not minimal: wsproto refuses it
                return frames, pos, False
            head += 2
        start = head + 4
        if end < start + length:
            break
        n = length
        payload = (int.from_bytes(data[start:start + n], "big")
                   ^ int.from_bytes((data[head:start] * (n // 4 + 1))[:n], "big")
                   ).to_bytes(n, "big")
        if opcode == OP_TEXT:
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError:
                return frames, pos, False
        frames.append((opcode, payload))
        pos = start + n
    return frames, pos, True


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final websocket text frame carrying ``payload`` (RFC 6455
    section 5.2: what a server sends, with no extension)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class NoReaderThread:
    """The ``thread_class`` given to simple-websocket's ``Server``: its
    background reader thread is never started, because the connection's own
    greenlet reads the socket (:meth:`WebsocketConnection.serve`), which saves
    a greenlet switch, a selector wait and an event per incoming message."""

    def __init__(self, target: Any = None) -> None:
        self.name = "websocket reader (unused)"

    def start(self) -> None:
        """Nothing: see the class docstring."""


class WebsocketConnection(Connection):
    """A client of ``/websocket``: simple-websocket's ``Server`` made the
    handshake (with a :class:`NoReaderThread`); :meth:`serve` reads frames in
    the handler's greenlet, with :func:`split_simple_frames` while they are
    simple and without permessage-deflate, else with wsproto."""

    transport = WEBSOCKET

    def __init__(self, manager: "ConnectionManager", ws: Any, ip: str | None,
                 user: dict | None) -> None:
        self.ws = ws
        # simple-websocket accepts permessage-deflate whenever the client offers it
        offered = getattr(ws, "environ", {}).get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")
        self.deflate = "permessage-deflate" in offered.lower()
        super().__init__(manager, ip, user)

    def serve(self, ping_interval: float = PING_INTERVAL) -> None:
        """Read and execute frames until the client closes, the connection is
        closed, or a ping goes unanswered for ``ping_interval`` seconds.

        Each complete text (or binary) message goes to :meth:`handle_frame`;
        pings are answered, a close frame is answered and ends the session.
        Raises nothing: a socket or protocol error ends the session."""
        ws, sock = self.ws, self.ws.sock
        proto = ws.ws
        sock.settimeout(None)     # gunicorn leaves its keep-alive timeout on the socket
        pinger = gevent.spawn(self._ping_loop, ping_interval)
        partial: list[Any] = []
        simple = not self.deflate   # frames read by split_simple_frames until one is not
        pending = b""
        try:
            while not self.closed:
                data = sock.recv(RECEIVE_BYTES)
                if not data:
                    break
                if simple:
                    if pending:
                        data = pending + data
                    frames, used, simple = split_simple_frames(data)
                    for opcode, payload in frames:
                        if opcode == OP_PONG:
                            ws.pong_received = True
                        elif opcode == OP_PING:
                            with self._write_lock:
                                sock.sendall(bytes((0x8A, len(payload))) + payload)
                        else:
                            self.handle_frame(payload)
                    if simple:
                        pending = data[used:]
                        continue
                    data = data[used:]     # from a frame boundary on, wsproto reads it all
                proto.receive_data(data)
                for event in proto.events():
                    if isinstance(event, (TextMessage, BytesMessage)):
                        if event.message_finished and not partial:
                            self.handle_frame(event.data)
                            continue
                        partial.append(event.data)
                        if event.message_finished:
                            first = partial[0]
                            self.handle_frame("".join(partial) if isinstance(first, str)
                                              else b"".join(partial))
                            partial = []
                    elif isinstance(event, Ping):
                        self._send_control(event.response())
                    elif isinstance(event, Pong):
                        ws.pong_received = True
                    elif isinstance(event, CloseConnection):
                        ws.close_reason, ws.close_message = event.code, event.reason
                        if ws.connected:
                            ws.connected = False
                            self._send_control(event.response())
                        return
        except Exception as err:  # socket errors and protocol violations end the session
            log.debug("websocket %s: %s", self.uid, err)
        finally:
            ws.connected = False
            pinger.kill(block=False)
            try:
                sock.close()
            except OSError:
                pass

    def _send_control(self, event: Any) -> None:
        """Send a control frame (pong, close) between the writer's messages."""
        with self._write_lock:
            self.ws.sock.sendall(self.ws.ws.send(event))

    def _ping_loop(self, interval: float) -> None:
        ws = self.ws
        while not self.closed:
            gevent.sleep(interval)
            if not ws.connected:
                return
            if not ws.pong_received:
                log.info("websocket %s: no pong in %.0f s, closing", self.uid, interval)
                self.close()
                return
            ws.pong_received = False
            try:
                self._send_control(Ping())
            except Exception:
                return

    def write(self, text: str) -> None:
        self.write_many((text,))

    def write_many(self, texts: Any) -> None:
        """Encode each message as a websocket text frame and send them all in
        one ``sendall`` (simple-websocket's ``send`` sends one frame with one
        ``send``, which may also write only part of a large frame); a
        ``bytes`` item is already on the wire's form (the rest of a frame)."""
        ws = self.ws
        if not ws.connected:
            raise ConnectionError("websocket closed")
        if self.deflate:
            encode = ws.ws.send
            data = b"".join([t if isinstance(t, bytes) else encode(TextMessage(data=t))
                             for t in texts])
        else:
            data = b"".join([t if isinstance(t, bytes) else text_frame(t.encode())
                             for t in texts])
        ws.sock.sendall(data)

    def wire_form(self, text: str, shared: dict[str, bytes] | None = None) -> bytes:
        """A websocket text frame; the same frame serves every connection
        without permessage-deflate (``shared["ws"]``), a compressed one is
        this connection's own (wsproto keeps its compression context)."""
        if self.ws.connected and not self.deflate:
            frame = shared.get("ws") if shared is not None else None
            if frame is None:
                frame = text_frame(text.encode())
                if shared is not None:
                    shared["ws"] = frame
            return frame
        if not self.ws.connected:
            raise ConnectionError("websocket closed")
        return self.ws.ws.send(TextMessage(data=text))

    def transport_socket(self) -> Any:
        return self.ws.sock

    def close_transport(self) -> None:
        """Send a close frame; the client has CLOSE_GRACE seconds to answer
        it before the socket is closed under the reader."""
        ws = self.ws
        # not while a write is under way (or failed holding the lock): the
        # frame would land inside another, and the socket is closed anyway
        if ws.connected and self._write_lock.acquire(blocking=False):
            try:
                ws.close()
            except Exception:
                pass
            finally:
                self._write_lock.release()
        gevent.spawn_later(CLOSE_GRACE, self._close_socket)

    def _close_socket(self) -> None:
        try:
            self.ws.sock.close()
        except OSError:
            pass


class UnixConnection(Connection):
    """A client of ``DATA_PATH/comms/moonraker.sock`` (ETX-terminated frames)."""

    transport = UNIX

    def __init__(self, manager: "ConnectionManager", sock: Any) -> None:
        self.sock = sock
        super().__init__(manager, None, None)

    def write(self, text: str) -> None:
        self.write_many((text,))

    def write_many(self, texts: Any) -> None:
        """All the messages in one ``sendall``, each ETX-terminated (a
        ``bytes`` item is the rest of one already terminated)."""
        self.sock.sendall(b"".join([t if isinstance(t, bytes) else t.encode() + b"\x03"
                                    for t in texts]))

    def wire_form(self, text: str, shared: dict[str, bytes] | None = None) -> bytes:
        """``text`` UTF-8 encoded and ETX-terminated (``shared["unix"]``)."""
        data = shared.get("unix") if shared is not None else None
        if data is None:
            data = text.encode() + b"\x03"
            if shared is not None:
                shared["unix"] = data
        return data

    def transport_socket(self) -> Any:
        return self.sock

    def close_transport(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class ConnectionManager:
    """All live connections.

    Args:
        server: the :class:`moonflask.app.Server`.
        max_websockets: ``[server] max_websocket_connections``.
    """

    def __init__(self, server: Any, max_websockets: int = 50) -> None:
        self.server = server
        self.max_websockets = max_websockets
        self._conns: dict[int, Connection] = {}

    def new_uid(self) -> int:
        """A fresh connection id, unique among live connections."""
        while True:
            uid = random.randint(10**9, 2**32 - 1)
            if uid not in self._conns:
                return uid

    def add(self, conn: Connection) -> None:
        """Register ``conn`` (its uid was drawn from :meth:`new_uid`)."""
        self._conns[conn.uid] = conn
        self.server.events.emit("connection:opened", conn)

    def remove(self, conn: Connection) -> None:
        """Forget ``conn``; its subscriptions leave the Klippy union."""
        if self._conns.pop(conn.uid, None) is not None:
            self.server.events.emit("connection:closed", conn)

    def get(self, uid: int) -> Connection | None:
        """The live connection with id ``uid``, or None."""
        return self._conns.get(uid)

    def all(self) -> Iterator[Connection]:
        """Every live connection (a snapshot)."""
        return iter(list(self._conns.values()))

    def websocket_count(self) -> int:
        """The number of open websockets (``server.info`` websocket_count)."""
        return sum(1 for c in self._conns.values() if c.transport == WEBSOCKET)

    def websocket_limit_reached(self) -> bool:
        """True when a new websocket would exceed max_websocket_connections."""
        return self.websocket_count() >= self.max_websockets

    def broadcast(self, text: str) -> None:
        """Queue an already-encoded message on every authenticated
        connection (an untrusted websocket that has not logged in or
        identified with credentials receives no notification)."""
        shared: dict[str, bytes] = {}      # the message framed once per kind of transport
        for conn in list(self._conns.values()):
            if conn.receives_notifications():
                conn.send_text(text, shared)

    def close_all(self) -> None:
        """Close every connection (shutdown / restart)."""
        for conn in list(self._conns.values()):
            conn.close()
