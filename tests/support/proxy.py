"""Network stand-ins for the test database: a proxy that can be taken down or frozen, and a
server that accepts connections and never answers."""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def port_socket(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:*port* (0: a free port), not listening yet.

    Bound without listening, it holds the port: connections to it are refused, and no other
    socket takes it (nor is it given to one binding port 0). ``SO_REUSEPORT`` lets the next
    one of the proxy's own be bound beside it before it is closed, so that the port is never
    free for a moment.
    """
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def _close(holder: list[socket.socket]) -> None:
    for sock in holder:
        sock.close()


class DatabaseProxy:
    """Forwards 127.0.0.1:<port> to the test database while up; refuses connections while down.

    It holds its port from the start to its end, up or down (see :func:`port_socket`): a
    port given back while the proxy was down could be taken by another process meanwhile,
    and the proxy could not come up again where its clients connect.
    """

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        host, port = str(params.get("host") or "/tmp"), int(params.get("port") or 5432)
        self._target: tuple[int, object] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        held = port_socket(0)  # bound, not listening: down
        self.port = held.getsockname()[1]
        self._held = [held]
        """The socket on the port: listening while up, only bound while down."""
        weakref.finalize(self, _close, self._held)  # when the proxy goes, the port goes
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=self.port)
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._frozen: set[socket.socket] = set()
        self._upstream: set[socket.socket] = set()
        self._cut_after_send: set[socket.socket] = set()
        self._peer: dict[socket.socket, socket.socket] = {}  # client -> its upstream
        self._ready: dict[socket.socket, int] = {}  # upstream -> ReadyForQuery since frozen
        self._frozen_new = False
        self._lock = threading.Lock()
        self._replied = threading.Condition(self._lock)
        self.accepted = 0
        """Connections accepted so far."""

    def up(self) -> None:
        """Accept connections on the port, and forward them."""
        with self._lock:
            if self._listener is not None:
                return
            [listener] = self._held
            listener.listen()
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            self._stop_listening()
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def refuse_new(self) -> None:
        """Refuse new connections; the open ones go on as they are."""
        with self._lock:
            self._stop_listening()

    def _stop_listening(self) -> None:
        """Close the listening socket, a bound one holding the port first (under the lock)."""
        listener = self._listener
        if listener is None:
            return
        self._held[:] = [port_socket(self.port)]
        with contextlib.suppress(OSError):  # (wakes the thread blocked in accept())
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        self._listener = None

    def freeze(self, *, new: bool = False) -> None:
        """Stop forwarding on the open connections, without closing them: a silent partition.

        New connections are forwarded as usual; with *new*, they are accepted and never
        answered either: a server whose processes are all stopped (SIGSTOP).
        """
        with self._lock:
            self._frozen.update(self._sockets)
            self._frozen_new = new

    def lose_next_reply(self) -> None:
        """On the open connections, forward the client's next request to the server, then end
        the connection on the client's side without the server's reply: a statement that
        reached the server and ran, its reply lost in a partition. The cut comes once the
        server has answered (or after 20 s: a commit may wait for another one's on a busy
        server), so what the request did is in the database when the client hears of the
        cut. New connections are forwarded as usual."""
        with self._lock:
            self._frozen.update(self._upstream)
            self._ready.update(dict.fromkeys(self._upstream, 0))
            self._cut_after_send.update(set(self._sockets) - self._upstream)

    def swallow_replies(self) -> None:
        """On the open connections, forward the client's data to the server but none of the
        server's replies: a statement that ran, its reply never coming. New connections are
        forwarded as usual."""
        with self._lock:
            self._frozen.update(self._upstream)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:  # accepted as it went down: refused
                    client.close()
                    return
                if self._frozen_new:
                    self._sockets.append(client)
                    self.accepted += 1
                    continue
            family, address = self._target
            upstream = socket.socket(family)
            try:
                upstream.connect(address)
            except OSError:  # the database is not there: the client is cut
                upstream.close()
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile: closed as it did
                    upstream.close()
                    client.close()
                    return
                self._sockets += [client, upstream]
                self._upstream.add(upstream)
                self._peer[client] = upstream
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        sent = b""  # what was forwarded since the connection was marked to be cut
        dropped = b""  # the server's messages dropped since its connection was frozen
        try:
            while data := source.recv(65536):
                if source not in self._frozen:
                    sink.sendall(data)
                elif source in self._upstream:
                    dropped = self._count_replies(source, dropped + data)
                if source in self._cut_after_send:
                    sent += data
                    if not ends_a_request(sent):
                        continue  # a request can come in several reads: all of it goes
                    self._wait_for_replies(self._peer.get(source), requests_in(sent))
                    source.shutdown(socket.SHUT_RDWR)  # the server's side stays open
                    return
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _count_replies(self, upstream: socket.socket, data: bytes) -> bytes:
        """Count the ``ReadyForQuery`` messages in *data*; return its unfinished tail."""
        at = 0
        while at + 5 <= len(data):
            end = at + 1 + int.from_bytes(data[at + 1 : at + 5], "big")
            if end > len(data):
                break
            if data[at : at + 1] == b"Z":
                with self._replied:
                    self._ready[upstream] = self._ready.get(upstream, 0) + 1
                    self._replied.notify_all()
            at = end
        return data[at:]

    def _wait_for_replies(self, upstream: socket.socket | None, requests: int) -> None:
        if upstream is None:
            return
        with self._replied:
            self._replied.wait_for(lambda: self._ready.get(upstream, 0) >= requests, timeout=20)


def ends_a_request(data: bytes) -> bool:
    """Whether *data* (a client's messages, from a message's start) holds a whole request:
    a simple ``Query``, or an extended one up to its ``Sync`` (until which the server does
    not commit it)."""
    at = 0
    while at + 5 <= len(data):
        kind, length = data[at : at + 1], int.from_bytes(data[at + 1 : at + 5], "big")
        at += 1 + length
        if at > len(data):
            return False
        if kind in (b"Q", b"S"):
            return True
    return False


def requests_in(data: bytes) -> int:
    """How many whole requests (see `ends_a_request`) *data* holds."""
    at, requests = 0, 0
    while at + 5 <= len(data):
        kind, length = data[at : at + 1], int.from_bytes(data[at + 1 : at + 5], "big")
        at += 1 + length
        if at <= len(data) and kind in (b"Q", b"S"):
            requests += 1
    return requests


class SilentServer:
    """Accepts connections and never answers: a database that hangs while connecting."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        """Connections accepted so far."""
        self._held: list[socket.socket] = []
        self.connected = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(connection)
            self.accepted += 1
            self.connected.set()

    def close(self) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()
