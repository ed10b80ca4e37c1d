"""Prometheus metrics over HTTP: ``GET /metrics`` in the text exposition format 0.0.4.

With probes for an orchestrator: ``GET /livez`` (200 while the service's event loop runs)
and ``GET /readyz`` (200 while it serves, 503 with the reason otherwise: see
:meth:`MetricsSource.readiness`).

A small HTTP server of its own (no extra dependency): it reads one request per connection,
answers it and closes. Malformed requests get 400, other paths 404, other methods 405; none
can disturb the service. It serves at most :data:`MAX_CONNECTIONS` connections at once (more
wait to be accepted), each for at most :data:`REQUEST_TIMEOUT` seconds, and outlives running
out of file descriptors (see :mod:`dispatcher.server.accepting`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.streams.stapled
from anyio.abc import SocketListener, SocketStream, TaskStatus

from dispatcher.schema import Outcome
from dispatcher.server.accepting import serve_connections
from dispatcher.server.backoff import FIRST_RETRY, MAX_RETRY, Backoff
from dispatcher.server.brokers.base import StartRefused
from dispatcher.server.log_handler import log_lines_dropped
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.rejection import REJECTION_REASONS
from dispatcher.server.resources import shortage_text
from dispatcher.server.stats import BUCKETS, Histogram, QueueSampling, ServiceStats

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


class MetricsSource(Protocol):
    """What the metrics are read from (a :class:`~dispatcher.server.view.ServiceView`)."""

    @property
    def stats(self) -> ServiceStats:
        """The service's counters."""

    def worker_statuses(self) -> dict[str, int]:
        """How many workers are in each status."""

    def counts(self) -> dict[str, Any]:
        """Jobs held: ``queued``, ``blocked``, ``delayed``."""

    def queue_sampling(self) -> QueueSampling | None:
        """The durable queues' last sampled depth; ``None`` without ``brokers.pg_queue``."""

    def registered_tasks(self) -> frozenset[str]:
        """The registered task names (none until the first worker has said)."""

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
        self._zeros = ZeroSeries()

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
                raise StartRefused(f"cannot serve metrics on {where}: {exc}") from None
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
                with anyio.fail_after(REQUEST_TIMEOUT):  # a client that never reads too
                    status, body, head_only, kind = self._respond(await _read_head(client))
                    allow = "Allow: GET, HEAD\r\n" if status.startswith("405") else ""
                    head = (
                        f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n{allow}"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    )
                    # HEAD: the headers GET would get, its Content-Length too, without the body.
                    await client.send(head.encode() + (b"" if head_only else body))
            except (TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                return

    def _respond(self, head: bytes | None) -> tuple[str, bytes, bool, str]:
        """What answers the request *head*: status, body, whether a HEAD, content type."""
        self.requests += 1
        try:
            request_line = (head or b"").split(b"\r\n", 1)[0].decode("ascii")
            method, target, version = request_line.split(" ")
        except (UnicodeDecodeError, ValueError):
            return "400 Bad Request", b"bad request\n", False, PLAIN_TEXT
        head_only = method == "HEAD"
        if not version.startswith("HTTP/"):
            return "400 Bad Request", b"bad request\n", head_only, PLAIN_TEXT
        path = _path(target)
        if path not in ("/metrics", LIVENESS_PATH, READINESS_PATH):
            not_found = b"not found: try /metrics, /livez or /readyz\n"
            return "404 Not Found", not_found, head_only, PLAIN_TEXT
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n", False, PLAIN_TEXT
        if path == LIVENESS_PATH:  # answered: the event loop runs
            return "200 OK", b"alive\n", head_only, PLAIN_TEXT
        if path == READINESS_PATH:
            reasons = self._source.readiness()
            if reasons:
                return "503 Service Unavailable", _not_ready(reasons), head_only, PLAIN_TEXT
            return "200 OK", b"ready\n", head_only, PLAIN_TEXT
        metrics = "".join(render(self._source, self._zeros)).encode()
        return "200 OK", metrics, head_only, CONTENT_TYPE


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


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def _family(name: str, kind: str, help: str) -> str:
    return f"# HELP {name} {help}\n# TYPE {name} {kind}\n"


def _histograms(name: str, help: str, by_task: dict[str, Histogram]) -> Iterator[str]:
    yield _family(name, "histogram", help)
    for task, histogram in sorted(by_task.items()):
        cumulative = 0
        for bound, count in zip((*BUCKETS, float("inf")), histogram.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            yield f"{name}_bucket{_labels(task=task, le=le)} {cumulative}\n"
        yield f"{name}_sum{_labels(task=task)} {histogram.total}\n"
        yield f"{name}_count{_labels(task=task)} {histogram.count}\n"


def render(source: MetricsSource, zeros: ZeroSeries | None = None) -> Iterator[str]:
    """The metrics of *source* in the Prometheus text format.

    The counters by reason, and by task and outcome, are exported from the start, at 0, for
    every known reason, and for the registered tasks with each failure outcome (see
    :class:`ZeroSeries`; *zeros* keeps their lines from one call to the next): an alert on
    ``increase()`` sees the first event after a start only when the series was there before.
    """
    stats, counts = source.stats, source.counts()
    yield _family(
        "dispatcher_messages_received_total",
        "counter",
        "Messages received: task messages and control commands.",
    )
    yield f"dispatcher_messages_received_total {stats.received}\n"
    yield _family("dispatcher_messages_rejected_total", "counter", "Messages rejected, by reason.")
    rejected = stats.rejected
    for reason in sorted(_ALL_REASONS.union(rejected)):
        yield f"dispatcher_messages_rejected_total{_labels(reason=reason)} {rejected[reason]}\n"
    yield _family("dispatcher_control_commands_total", "counter", "Control commands run.")
    yield f"dispatcher_control_commands_total {stats.control}\n"
    yield _family("dispatcher_tasks_finished_total", "counter", "Tasks ended, by task and outcome.")
    finished = stats.finished_by_task
    for (task, outcome), count in sorted(finished.items()):
        yield f"dispatcher_tasks_finished_total{_labels(task=task, outcome=outcome)} {count}\n"
    yield (zeros or ZeroSeries()).lines(source.registered_tasks(), finished)
    yield _family("dispatcher_tasks_discarded_total", "counter", "Tasks dropped by on_duplicate.")
    yield f"dispatcher_tasks_discarded_total {stats.discarded}\n"
    yield _family(
        "dispatcher_log_lines_dropped_total", "counter", "Log lines dropped: the reader behind."
    )
    yield f"dispatcher_log_lines_dropped_total {log_lines_dropped()}\n"
    yield _family("dispatcher_workers", "gauge", "Worker processes, by status.")
    statuses = source.worker_statuses()
    for status in ("starting", "ready", "busy", "stopping"):
        yield f"dispatcher_workers{_labels(status=status)} {statuses.get(status, 0)}\n"
    # dispatcherd's two other names, as it exposes them, for dashboards made for it.
    yield _family(
        "dispatcher_control_messages_count_total", "counter", "Control commands (dispatcherd's)."
    )
    yield f"dispatcher_control_messages_count_total {stats.control}\n"
    yield _family(
        "dispatcher_worker_count_total", "counter", "Worker processes now (dispatcherd's)."
    )
    yield f"dispatcher_worker_count_total {sum(statuses.values())}\n"
    for name, help, value in (
        ("dispatcher_queue_length", "Tasks waiting for a worker.", counts["queued"]),
        ("dispatcher_blocked_tasks", "Tasks held back by on_duplicate.", counts["blocked"]),
        ("dispatcher_delayed_tasks", "Tasks held for their delay.", counts["delayed"]),
    ):
        yield _family(name, "gauge", help)
        yield f"{name} {value}\n"
    yield from _brokers(stats)
    yield from _histograms(
        "dispatcher_queue_wait_seconds", "From publication to start, by task.", stats.queue_wait
    )
    yield from _histograms(
        "dispatcher_run_time_seconds", "From start to end, by task.", stats.run_time
    )
    sampling = source.queue_sampling()
    if sampling is not None:
        yield from _durable_queues(stats, sampling)


_ALL_REASONS: Final = frozenset(REJECTION_REASONS)

ZERO_SERIES_OUTCOMES: Final = tuple(
    outcome.value for outcome in Outcome if outcome not in (Outcome.OK, Outcome.CANCELLED)
)
"""The outcomes of ``dispatcher_tasks_finished_total`` exported at 0 for each registered task:
the failures (``error``, ``timeout``, ``killed``, ``worker_lost``, ``memory_exceeded``), which
alerts watch. ``ok`` and ``cancelled`` (asked for) appear once they happen."""

MAX_ZERO_SERIES_TASKS: Final = 1_000
"""Registered tasks beyond which none has series exported at 0 (each scrape would carry
thousands of lines of zeros)."""


class ZeroSeries:
    """The lines of ``dispatcher_tasks_finished_total`` at 0: registered tasks, failure outcomes.

    One for each of :data:`ZERO_SERIES_OUTCOMES` with each registered task that did not end
    so yet, while there are at most :data:`MAX_ZERO_SERIES_TASKS` registered tasks (none
    beyond). Made once for the registered names (again when they are replaced, on reload),
    and again when a pair of them first happens: a scrape copies them, no more.
    """

    def __init__(self) -> None:
        self._names: frozenset[str] | None = None
        self._lines: dict[tuple[str, str], str] = {}
        self._finished = -1
        self._text = ""

    def lines(self, names: frozenset[str], finished: Mapping[tuple[str, str], int]) -> str:
        """The lines for *names*, the registered tasks, less the pairs *finished* counts.

        *finished* only gains pairs (a counter since the start), but for those of the tasks
        a reload removes, dropped as the names are replaced: the lines are made again when
        the names are new, or *finished* has more pairs than last time.
        """
        if names is not self._names:
            self._names = names
            self._lines = {}
            if len(names) <= MAX_ZERO_SERIES_TASKS:
                self._lines = {
                    (task, outcome): (
                        f"dispatcher_tasks_finished_total{_labels(task=task, outcome=outcome)} 0\n"
                    )
                    for task in sorted(names)
                    for outcome in ZERO_SERIES_OUTCOMES
                }
            self._finished = -1
        if len(finished) != self._finished:
            self._finished = len(finished)
            self._text = "".join(line for pair, line in self._lines.items() if pair not in finished)
        return self._text


def _brokers(stats: ServiceStats) -> Iterator[str]:
    """``dispatcher_broker_up`` and ``dispatcher_broker_failures_total``, by broker."""
    brokers = sorted(stats.brokers.items())
    yield _family(
        "dispatcher_broker_up",
        "gauge",
        "Whether a broker serves the service (1), or fails and is being retried (0).",
    )
    for name, health in brokers:
        yield f"dispatcher_broker_up{_labels(broker=name)} {int(health.failing_since is None)}\n"
    yield _family(
        "dispatcher_broker_failures_total",
        "counter",
        "Failures of a broker: a lost connection, a failed claim, a run that failed.",
    )
    for name, health in brokers:
        yield f"dispatcher_broker_failures_total{_labels(broker=name)} {health.failures}\n"


def _durable_queues(stats: ServiceStats, sampling: QueueSampling) -> Iterator[str]:
    """The ``dispatcher_pg_queue_*`` families: depth gauges, the sample's health, counters.

    Counters are exported for every configured queue, at 0 too: a series that appears only
    once it moves cannot be alerted on.
    """
    depths = sampling.depths
    for name, help, field in (
        ("ready_jobs", "Jobs of a durable queue ready to start (sampled).", "ready"),
        ("delayed_jobs", "Jobs of a durable queue waiting for a later time (sampled).", "delayed"),
        (
            "oldest_ready_age_seconds",
            "How long the oldest ready job of a durable queue has waited (sampled).",
            "oldest_ready_age",
        ),
    ):
        yield _family(f"dispatcher_pg_queue_{name}", "gauge", help)
        for queue, depth in sorted(depths.items()):
            value = getattr(depth, field)
            yield f"dispatcher_pg_queue_{name}{_labels(queue=queue)} {value}\n"
    yield _family(
        "dispatcher_pg_queue_sample_ok",
        "gauge",
        "Whether the last sample of the durable queues' depth succeeded (1) or failed (0).",
    )
    yield f"dispatcher_pg_queue_sample_ok {int(sampling.ok)}\n"
    yield _family(
        "dispatcher_pg_queue_sampled_timestamp_seconds",
        "gauge",
        "When the depth gauges were last sampled (0: never).",
    )
    yield f"dispatcher_pg_queue_sampled_timestamp_seconds {sampling.sampled_at or 0}\n"
    for name, help, counts in (
        ("claims", "Jobs claimed from a durable queue by this service.", stats.pg_queue_claims),
        ("retries", "Jobs put back to wait for another attempt.", stats.pg_queue_retries),
        ("failures", "Jobs left failed: attempts used up, or refused.", stats.pg_queue_failures),
        (
            "lease_expiries",
            "Jobs taken back after their claim's lease ran out.",
            stats.pg_queue_lease_expiries,
        ),
    ):
        yield _family(f"dispatcher_pg_queue_{name}_total", "counter", help)
        for queue in sorted(set(sampling.queues) | set(depths) | set(counts)):
            yield f"dispatcher_pg_queue_{name}_total{_labels(queue=queue)} {counts[queue]}\n"
