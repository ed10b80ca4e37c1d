"""Accept loops: errors of accept() pause them, never end them; connections are capped."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any, cast

import anyio
import pytest
from anyio.abc import SocketListener, SocketStream

from dispatcher.server.accepting import serve_connections


class FakeStream:
    """Stands for an accepted connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[bytes] = []
        self.closed = False

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def aclose(self) -> None:
        self.closed = True


class FakeListener:
    """Hands out *outcomes* in turn from ``accept()``: raises exceptions, returns streams."""

    def __init__(self, outcomes: list[BaseException | FakeStream]) -> None:
        self.outcomes = outcomes
        self.accepted = 0
        self.drained = anyio.Event()

    async def accept(self) -> FakeStream:
        await anyio.lowlevel.checkpoint()
        if not self.outcomes:
            self.drained.set()
            await anyio.sleep_forever()
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        self.accepted += 1
        return outcome


def run_server(
    listener: FakeListener, scenario: Callable[[list[str]], Any], **options: Any
) -> list[str]:
    """Serve *listener* while *scenario(handled)* runs; return the names handled."""
    handled: list[str] = []
    release = anyio.Event()

    async def handle(client: SocketStream) -> None:
        stream = cast(FakeStream, client)
        handled.append(stream.name)
        if stream.name.startswith("held"):
            await release.wait()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(
                lambda: serve_connections(
                    cast(SocketListener, listener), handle, name="the test server", **options
                )
            )
            with anyio.fail_after(10):
                await scenario(handled)
                release.set()
                await listener.drained.wait()
            group.cancel_scope.cancel()

    anyio.run(main)
    return handled


def test_accept_errors_are_logged_paused_on_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = FakeListener(
        [
            OSError(errno.EMFILE, "Too many open files"),
            FakeStream("first"),
            OSError(errno.ECONNABORTED, "Software caused connection abort"),
            OSError(errno.ENFILE, "Too many open files in system"),
            anyio.BrokenResourceError(),  # a unix listener's, wrapping the OSError
            FakeStream("second"),
        ]
    )
    cast(BaseException, listener.outcomes[4]).__cause__ = OSError(errno.ENOBUFS, "No buffer")

    async def scenario(handled: list[str]) -> None:
        await listener.drained.wait()

    with caplog.at_level(logging.DEBUG, logger="dispatcher.service"):
        handled = run_server(listener, scenario, max_connections=4)
    assert handled == ["first", "second"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # One warning (the rest of the burst is counted in the next one), no traceback.
    assert warnings == [
        "the test server cannot accept a connection: Too many open files (EMFILE); "
        "pausing 0.5 s (0 connections open)"
    ]
    assert not any(r.exc_info for r in caplog.records)


def test_past_the_cap_connections_wait_to_be_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = FakeListener([FakeStream("held-1"), FakeStream("held-2"), FakeStream("third")])

    async def scenario(handled: list[str]) -> None:
        while len(handled) < 2:
            await anyio.sleep(0.01)
        for _ in range(20):  # the loop had every chance to accept the third
            await anyio.lowlevel.checkpoint()
        assert listener.accepted == 2

    with caplog.at_level(logging.WARNING, logger="dispatcher.service"):
        handled = run_server(listener, scenario, max_connections=2)
    assert handled == ["held-1", "held-2", "third"]
    assert "the test server serves 2 connections, the most it serves at once: new ones wait" in [
        r.getMessage() for r in caplog.records
    ]


def test_past_the_cap_with_a_refusal_connections_are_told_and_closed() -> None:
    refused = FakeStream("refused")
    listener = FakeListener([FakeStream("held-1"), refused])

    async def refuse(client: SocketStream, connected: int) -> None:
        await client.send(f"busy: {connected} connected\n".encode())

    async def scenario(handled: list[str]) -> None:
        while not refused.closed:
            await anyio.sleep(0.01)

    handled = run_server(listener, scenario, max_connections=1, refuse=refuse)
    assert refused.sent == [b"busy: 1 connected\n"]
    assert handled == ["held-1"]


def test_a_bug_in_a_handler_costs_its_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    first, second = FakeStream("bug"), FakeStream("fine")
    listener = FakeListener([first, second])
    handled: list[str] = []

    async def handle(client: SocketStream) -> None:
        stream = cast(FakeStream, client)
        handled.append(stream.name)
        if stream.name == "bug":
            raise RuntimeError("handler bug")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(
                lambda: serve_connections(
                    cast(SocketListener, listener),
                    handle,
                    name="the test server",
                    max_connections=1,
                )
            )
            with anyio.fail_after(10):
                await listener.drained.wait()
            group.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR, logger="dispatcher.service"):
        anyio.run(main)
    assert handled == ["bug", "fine"]
    assert first.closed
    assert any(
        "internal error in the test server: RuntimeError: handler bug" in r.getMessage()
        for r in caplog.records
    )
