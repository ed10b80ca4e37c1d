"""Prometheus metrics over HTTP: ``GET /metrics`` in the text exposition format 0.0.4.

With probes for an orchestrator: ``GET /livez`` (200 while the service's event loop runs)
and ``GET /readyz`` (200 while it serves, 503 with the reason otherwise: see
:meth:`MetricsSource.readiness`).

A small HTTP server of its own (no extra dependency): it reads one request per connection,
answers it and closes. Malformed requests get 400, other paths 404, other methods 405; none
can disturb the service. It serves at most :data:`MAX_CONNECTIONS` connections at once (more
wait to be accepted); a client has :data:`REQUEST_TIMEOUT` seconds to send its request, and
to take each piece of the answer (a text of megabytes is sent in pieces of a mebibyte), and
it outlives running out of file descriptors (see :mod:`dispatcher.server.accepting`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterator
from typing import Final, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.streams.stapled
from anyio.abc import SocketListener, SocketStream, TaskStatus

from dispatcher.server.accepting import serve_connections
from dispatcher.server.backoff import FIRST_RETRY, MAX_RETRY, Backoff
from dispatcher.server.brokers.base import StartRefused
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.metrics_scrape import Body, MetricsText
from dispatcher.server.metrics_snapshot import MetricsNumbers, take_snapshot
from dispatcher.server.metrics_text import render_snapshot
from dispatcher.server.metrics_zeros import MAX_ZERO_SERIES_TASKS, ZERO_SERIES_OUTCOMES, ZeroSeries
from dispatcher.server.resources import shortage_text

__all__ = [
    "MAX_ZERO_SERIES_TASKS",
    "ZERO_SERIES_OUTCOMES",
    "MetricsServer",
    "MetricsSource",
    "ZeroSeries",
    "render",
]

logger = get_logger("dispatcher.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PLAIN_TEXT: Final = "text/plain; charset=utf-8"
"""The content type of every answer but the metrics'."""
LIVENESS_PATH: Final = "/livez"
READINESS_PATH: Final = "/readyz"
MAX_REQUEST_HEAD: Final = 8192
REQUEST_TIMEOUT: Final = 5.0
"""Seconds a connection may take to send its request and read the answer."""
MAX_CONNECTIONS: Final = 64
"""Connections served at once; more wait, unaccepted, until one closes."""


DUAL_STACK_HOST: Final = "::"
"""The host that serves IPv4 clients too (as ``::ffff:a.b.c.d``), where the system allows
IPv6 sockets to (``IPV6_V6ONLY`` off, as most servers bind it): every address of the host."""


def dual_stack_socket(port: int) -> socket.socket:
    """A listening TCP socket on :data:`DUAL_STACK_HOST` and *port*, for IPv6 and IPv4.

    :raises OSError: when it cannot be created or bound.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # a system without dual-stack sockets: IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as anyio's listeners
        sock.bind((DUAL_STACK_HOST, port))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


class MetricsSource(MetricsNumbers, Protocol):
    """What the metrics and the probes read (a :class:`~dispatcher.server.view.ServiceView`)."""

    def readiness(self) -> list[str]:
        """Why the service does not serve now, one reason each; none: it serves.

        Any client of the port reads them: no error text (it may name hosts and roles).
        """


def metrics_url(host: str, port: int) -> str:
    """The URL of the metrics on *host* and *port*; an IPv6 address is bracketed (RFC 3986).

    A zone (``fe80::1%eth0``) has its ``%`` written ``%25`` (RFC 6874).
    """
    if ":" in host and not host.startswith("["):
        host = "[" + host.replace("%", "%25") + "]"
    return f"http://{host}:{port}/metrics"


class MetricsServer:
    """Serves the service's metrics on ``service.metrics.host`` and ``port``."""

    def __init__(self, source: MetricsSource, host: str, port: int) -> None:
        self._source = source
        self.host = host
        self.port = port
        self.requests = 0
        self._text = MetricsText(source)

    @property
    def url(self) -> str:
        """Where the metrics are: ``http://127.0.0.1:8070/metrics``, ``http://[::1]:8070/metrics``."""
        return metrics_url(self.host, self.port)

    async def run(
        self,
        *,
        on_refused: Callable[[StartRefused], None] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled.

        Reports started once serving, or once a shortage of threads delays it: the service
        goes on starting (and can stop) while the server waits for a thread, and serves
        metrics once one starts.

        :raises StartRefused: when the address cannot be bound (another process holds it)
            before the start was reported; after it, the refusal goes to *on_refused*
            (raised without one).
        """
        started = False

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            listener = await self._listen(report_started)
        except StartRefused as refused:
            if not started or on_refused is None:
                raise
            on_refused(refused)
            return
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        logger.info("serving metrics on %s", self.url)
        report_started()
        async with listener:
            await serve_connections(
                listener,
                self._answer,
                name="the metrics server",
                max_connections=MAX_CONNECTIONS,
                logger=logger,
            )

    async def _listen(
        self, waiting: Callable[[], None]
    ) -> anyio.streams.stapled.MultiListener[SocketStream]:
        """Bind the address; wait out a shortage of threads (its lookup needs one).

        *waiting* is called before each pause.

        :raises StartRefused: when the address cannot be bound.
        """
        backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RETRY)
        while True:
            try:
                if self.host == DUAL_STACK_HOST:
                    listener = await SocketListener.from_socket(dual_stack_socket(self.port))
                    return anyio.streams.stapled.MultiListener([listener])
                return await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
            except OSError as exc:
                where = f"{self.host}:{self.port}"
                hint = ""
                if exc.errno == errno.EADDRINUSE:
                    hint = (
                        "; another process holds the port (is this service already running?): "
                        "stop it, or choose another service.metrics.port"
                    )
                raise StartRefused(f"cannot serve metrics on {where}: {exc}{hint}") from None
            except RuntimeError as exc:  # no thread: a limit reached, maybe for a moment
                delay = backoff.next_delay()
                logger.warning(
                    "cannot serve metrics on %s:%d yet (%s); trying again in %.1f s",
                    self.host,
                    self.port,
                    shortage_text(exc) or first_line(exc),
                    delay,
                )
                waiting()
                await anyio.sleep(delay)

    async def _answer(self, client: SocketStream) -> None:
        async with client:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT):  # a client that never sends it
                    request = await _read_head(client)
                # Not under the timeout: made off the loop, the text takes as long as the
                # loop's other work lets it (the clients share it, one at a time).
                status, body, head_only, kind = await self._respond(request)
                allow = "Allow: GET, HEAD\r\n" if status.startswith("405") else ""
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n{allow}"
                    f"Content-Length: {sum(map(len, body))}\r\nConnection: close\r\n\r\n"
                )
                # HEAD: the headers GET would get, its Content-Length too, without the body.
                for piece in (head.encode(), *(() if head_only else body)):
                    with anyio.fail_after(REQUEST_TIMEOUT):  # a client that stops reading
                        await client.send(piece)
            except (TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                return

    async def _respond(self, head: bytes | None) -> tuple[str, Body, bool, str]:
        """What answers the request *head*: status, body, whether a HEAD, content type."""
        self.requests += 1
        try:
            request_line = (head or b"").split(b"\r\n", 1)[0].decode("ascii")
            method, target, version = request_line.split(" ")
        except (UnicodeDecodeError, ValueError):
            return "400 Bad Request", (b"bad request\n",), False, PLAIN_TEXT
        head_only = method == "HEAD"
        if not version.startswith("HTTP/"):
            return "400 Bad Request", (b"bad request\n",), head_only, PLAIN_TEXT
        path = _path(target)
        if path not in ("/metrics", LIVENESS_PATH, READINESS_PATH):
            not_found = b"not found: try /metrics, /livez or /readyz\n"
            return "404 Not Found", (not_found,), head_only, PLAIN_TEXT
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", (b"method not allowed\n",), False, PLAIN_TEXT
        if path == LIVENESS_PATH:  # answered: the event loop runs
            return "200 OK", (b"alive\n",), head_only, PLAIN_TEXT
        if path == READINESS_PATH:
            reasons = self._source.readiness()
            if reasons:
                return "503 Service Unavailable", (_not_ready(reasons),), head_only, PLAIN_TEXT
            return "200 OK", (b"ready\n",), head_only, PLAIN_TEXT
        return "200 OK", await self._text.text(), head_only, CONTENT_TYPE


def _not_ready(reasons: list[str]) -> bytes:
    """The body of a 503 from ``/readyz``: the reasons, on one line (control characters out)."""
    said = "; ".join(reasons)
    return f"not ready: {''.join(c if c.isprintable() else ' ' for c in said)}\n".encode()


def _path(target: str) -> str:
    """The path of a request *target*, in origin form (``/metrics?x``) or absolute form.

    HTTP/1.1 servers must accept the absolute form (``http://host:8070/metrics``), which
    proxies send.
    """
    if target.partition("://")[0].lower() in ("http", "https"):
        return urlsplit(target).path or "/"
    return target.split("?", 1)[0]


async def _read_head(client: SocketStream) -> bytes | None:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        head += await client.receive()
        if len(head) > MAX_REQUEST_HEAD:
            return None
    return head


def render(source: MetricsNumbers, zeros: ZeroSeries | None = None) -> Iterator[str]:
    """The metrics of *source* in the Prometheus text format, made here and now.

    See :func:`~.metrics_text.render_snapshot`; *zeros* keeps the lines at 0 from one call
    to the next. The server makes its text off the event loop (:mod:`.metrics_scrape`).
    """
    return render_snapshot(take_snapshot(source, zeros or ZeroSeries()))
