"""``/metrics`` of thousands of tasks is written off the event loop, one text at a time.

Written on the loop, the text of 10,000 tasks (some 16 MB) took the loop a second or more a
scrape, during which nothing else ran: not even ``/livez``.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from dispatcher.server import metrics
from dispatcher.server.metrics import MetricsServer
from dispatcher.server.metrics_scrape import Body, MetricsText, encode_snapshot
from dispatcher.server.metrics_snapshot import MetricsSnapshot
from dispatcher.server.stats import QueueSampling, ServiceStats


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ManyTasks:
    """A service that ran each of *count* tasks once: one set of series per task."""

    def __init__(self, count: int) -> None:
        self.stats = ServiceStats()
        self.names = frozenset(f"myapp.module{i // 50}.tasks.task_number_{i}" for i in range(count))
        for name in self.names:
            self.stats.task_ended(name, "ok")
            self.stats.timings(name, 1.0, 1.5, 2.0)

    def worker_statuses(self) -> dict[str, int]:
        return {"ready": 1}

    def counts(self) -> dict[str, Any]:
        return {"queued": 0, "blocked": 0, "delayed": 0}

    def queue_sampling(self) -> QueueSampling | None:
        return None

    def registered_tasks(self) -> frozenset[str]:
        return self.names

    def readiness(self) -> list[str]:
        return []


def _get(port: int, path: str) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


def _read_all(client: socket.socket) -> bytes:
    received = bytearray()
    while chunk := client.recv(1 << 20):
        received += chunk
    client.close()
    return bytes(received)


def _probes_while_scraped(port: int) -> tuple[int, bytes]:
    """``/livez`` round trips made before the first byte of a ``/metrics`` answer, and it."""
    scrape = _get(port, "/metrics")
    answered = 0
    while not select.select([scrape], [], [], 0)[0]:
        assert _read_all(_get(port, "/livez")).endswith(b"alive\n")
        answered += 1
    return answered, _read_all(scrape)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_the_loop_answers_probes_while_the_text_of_10k_tasks_is_made() -> None:
    server = MetricsServer(ManyTasks(10_000), "127.0.0.1", 0)
    async with anyio.create_task_group() as task_group:
        await task_group.start(server.run)
        answered, answer = await anyio.to_thread.run_sync(_probes_while_scraped, server.port)
        task_group.cancel_scope.cancel()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert body.count(b"dispatcher_run_time_seconds_count{") == 10_000
    # Made on the loop, not one probe was answered until the text was (one, at the most, by
    # the time its first byte came); made off it, the loop answers them all along.
    print(f"{answered} probes answered while /metrics was made")
    assert answered >= 4, f"only {answered} probes answered while /metrics was made"


class Gated:
    """Encodes a snapshot once let (:attr:`go`), counting the calls."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.calls = 0

    def __call__(self, snapshot: MetricsSnapshot) -> Body:
        self.calls += 1
        assert self.go.wait(30)
        return encode_snapshot(snapshot)


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_scrapes_that_come_while_a_text_is_made_share_it() -> None:
    encode = Gated()
    text = MetricsText(ManyTasks(3), encode)
    got: list[bytes] = []  # each scrape's body

    async def scrape() -> None:
        got.append(b"".join(await text.text()))

    async with anyio.create_task_group() as task_group:
        for _ in range(3):
            task_group.start_soon(scrape)
        with anyio.fail_after(30):
            while encode.calls == 0:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # the others are waiting, not making one of their own
        encode.go.set()
    assert encode.calls == 1
    assert text.made == 1
    assert len(got) == 3
    assert len(set(got)) == 1
    assert b"dispatcher_tasks_finished_total{" in got[0]
    assert b"dispatcher_tasks_finished_total{" in b"".join(await text.text())
    assert encode.calls == 2  # none is being made: the next scrape makes one anew


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_text_whose_scrape_is_cancelled_still_reaches_the_others() -> None:
    encode = Gated()
    text = MetricsText(ManyTasks(3), encode)
    got: list[bytes] = []  # each scrape's body

    async def scrape() -> None:
        got.append(b"".join(await text.text()))

    first = anyio.CancelScope()

    async def scrape_cancelled() -> None:
        with first:
            await text.text()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(scrape_cancelled)
        with anyio.fail_after(30):
            while encode.calls == 0:
                await anyio.sleep(0.01)
        task_group.start_soon(scrape)
        await anyio.sleep(0.05)
        first.cancel()
        encode.go.set()
    assert encode.calls == 1
    assert len(got) == 1
    assert b"dispatcher_tasks_finished_total{" in got[0]


async def _busy(milliseconds: float) -> None:
    """Keep the loop busy *milliseconds* a turn, as a control command's walk does."""
    while True:
        end = time.perf_counter() + milliseconds / 1000
        while time.perf_counter() < end:
            pass
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_large_text_is_sent_whole_while_the_loop_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timeout bounds the wait for the request and each send, not the whole answer.

    Sent in pieces of 2,048 lines, each awaited on a loop busy 20 ms a turn, the text of
    2,000 tasks took longer than the timeout, and its answer was cut short.
    """
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 1.0)
    server = MetricsServer(ManyTasks(2_000), "127.0.0.1", 0)
    async with anyio.create_task_group() as task_group:
        await task_group.start(server.run)
        task_group.start_soon(_busy, 20)
        answer = await anyio.to_thread.run_sync(lambda: _read_all(_get(server.port, "/metrics")))
        task_group.cancel_scope.cancel()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert body.count(b"dispatcher_run_time_seconds_count{") == 2_000
