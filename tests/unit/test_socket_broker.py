"""The socket broker's input bounds: line length, clients, depth, and bugs per line."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatcher.schema import MAX_MESSAGE_BYTES
from dispatcher.server.brokers.socket import LineBuffer, LineTooLong, SocketBroker
from dispatcher.server.origin import Origin
from dispatcher.server.stats import ServiceStats


def test_lines_are_split_across_reads_and_kept_whole() -> None:
    lines = LineBuffer(max_line=100)
    assert lines.feed(b'{"a"') == []
    assert lines.feed(b": 1}\n\n{") == [b'{"a": 1}', b""]
    assert lines.feed(b"}") == []
    assert lines.feed(b"\nx\ny") == [b"{}", b"x"]


def test_a_line_over_the_limit_is_refused_even_before_its_newline() -> None:
    lines = LineBuffer(max_line=10)
    assert lines.feed(b"0123456789\n") == [b"0123456789"]
    with pytest.raises(LineTooLong, match="line over 10 bytes"):
        lines.feed(b"0123456789a")
    with pytest.raises(LineTooLong):
        LineBuffer(max_line=10).feed(b"0123456789abc\nshort\n")


def test_a_long_line_fed_in_small_pieces_is_joined_once() -> None:
    lines = LineBuffer(max_line=1 << 22)
    piece = b"x" * 4096
    for _ in range(1000):
        assert lines.feed(piece) == []
    [line] = lines.feed(b"\n")
    assert len(line) == 4096 * 1000


Handler = Callable[[SocketBroker, Path], Awaitable[None]]


def serve(tmp_path: Path, scenario: Handler, **options: Any) -> tuple[list[str], ServiceStats]:
    """Run a broker on a socket in *tmp_path* while *scenario* talks to it."""
    received: list[str] = []
    stats = ServiceStats()

    def intake(text: str, origin: Origin) -> None:
        """Stands for the intake: records task lines, answers control lines."""
        if not text.startswith('{"control"'):
            received.append(text)
            return
        message = json.loads(text)
        if message["control"] == "explode":
            raise RuntimeError("control bug")
        assert origin.reply is not None
        origin.reply(message["reply_to"], {"pong": message["control"]})

    broker = SocketBroker(str(tmp_path / "d.sock"), stats=stats, **options)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            await group.start(broker.run, intake)
            with anyio.fail_after(20):
                await scenario(broker, broker.path)
            group.cancel_scope.cancel()

    anyio.run(main)
    return received, stats


async def request(stream: anyio.abc.ByteStream, line: bytes) -> dict[str, Any]:
    await stream.send(line)
    reply = b""
    while not reply.endswith(b"\n"):
        reply += await stream.receive()
    return json.loads(reply)  # type: ignore[no-any-return]


def test_a_deep_line_costs_that_line_only(tmp_path: Path) -> None:
    async def scenario(broker: SocketBroker, path: Path) -> None:
        async with await anyio.connect_unix(path) as stream:
            await stream.send(b"[" * 2000 + b"]" * 2000 + b"\n")
            await stream.send(b'{"control": "explode", "reply_to": "me"}\n')
            reply = await request(stream, b'{"control": "alive", "reply_to": "me"}\n')
            assert reply == {"pong": "alive"}

    received, stats = serve(tmp_path, scenario)
    assert received == ["[" * 2000 + "]" * 2000]  # handed on, for the intake to reject
    assert stats.rejected == {"internal_error": 1}


def test_an_overlong_line_closes_that_connection_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(broker: SocketBroker, path: Path) -> None:
        async with await anyio.connect_unix(path) as stream:
            await stream.send(b"x" * (MAX_MESSAGE_BYTES + 1))
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
        async with await anyio.connect_unix(path) as stream:
            assert await request(stream, b'{"control": "a", "reply_to": "r"}\n') == {"pong": "a"}

    with caplog.at_level(logging.WARNING, logger="dispatcher.socket"):
        _received, stats = serve(tmp_path, scenario)
    assert stats.rejected == {"oversized": 1}
    assert any("line over" in r.getMessage() for r in caplog.records)


def test_clients_beyond_the_cap_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(broker: SocketBroker, path: Path) -> None:
        first = await anyio.connect_unix(path)
        second = await anyio.connect_unix(path)
        await request(first, b'{"control": "a", "reply_to": "r"}\n')
        await request(second, b'{"control": "b", "reply_to": "r"}\n')
        third = await anyio.connect_unix(path)
        assert json.loads(await third.receive()) == {
            "node_id": "node-a",
            "error": "the service has too many socket clients (2 connected, the most it "
            "serves at once); try again shortly",
        }
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await third.receive()
        await first.aclose()
        await third.aclose()
        await served_again(path)  # the freed place is taken again once the broker saw the close
        await second.aclose()

    with caplog.at_level(logging.WARNING, logger="dispatcher.socket"):
        serve(tmp_path, scenario, max_clients=2, node_id="node-a")
    assert any(
        "refusing a socket connection: 2 clients already connected" in r.getMessage()
        for r in caplog.records
    )


def test_socket_file_is_private(tmp_path: Path) -> None:
    async def scenario(broker: SocketBroker, path: Path) -> None:
        assert path.stat().st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(path))

    serve(tmp_path, scenario)


async def served_again(path: Path) -> None:
    """Wait until a new connection to *path* is served (a place has been freed)."""
    with anyio.fail_after(10):
        while True:
            async with await anyio.connect_unix(path) as stream:
                try:
                    reply = await request(stream, b'{"control": "again", "reply_to": "r"}\n')
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    continue  # refused before it could send
                if "error" not in reply:  # not the refusal
                    assert reply == {"pong": "again"}
                    return


def test_a_client_that_sends_no_whole_line_is_closed_and_frees_its_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(broker: SocketBroker, path: Path) -> None:
        async with await anyio.connect_unix(path) as idle:
            await idle.send(b'{"control": "half a line')
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await idle.receive()
            await served_again(path)

    with caplog.at_level(logging.WARNING, logger="dispatcher.socket"):
        serve(tmp_path, scenario, max_clients=1, idle_timeout=0.5)
    assert any(
        "socket:1: no complete line in 0.5 s: closing the connection" in r.getMessage()
        for r in caplog.records
    )


def test_each_whole_line_gives_a_client_more_time(tmp_path: Path) -> None:
    async def scenario(broker: SocketBroker, path: Path) -> None:
        async with await anyio.connect_unix(path) as stream:
            for _ in range(6):  # 1.2 s in all, beyond the idle timeout
                assert await request(stream, b'{"control": "a", "reply_to": "r"}\n')
                await anyio.sleep(0.2)
            assert await request(stream, b'{"control": "b", "reply_to": "r"}\n') == {"pong": "b"}

    serve(tmp_path, scenario, idle_timeout=0.5)


def test_a_client_that_reads_no_reply_is_closed_and_frees_its_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(broker: SocketBroker, path: Path) -> None:
        long_request = b'{"control": "' + b"x" * 65536 + b'", "reply_to": "r"}\n'
        async with await anyio.connect_unix(path) as deaf:
            closed = False
            while not closed:  # until the service closes it: it never reads the replies
                try:
                    await deaf.send(long_request)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    closed = True
        await served_again(path)

    with caplog.at_level(logging.WARNING, logger="dispatcher.socket"):
        serve(tmp_path, scenario, max_clients=1, write_timeout=0.5)
    assert any(
        "socket:1: replies left unread for 0.5 s: closing the connection" in r.getMessage()
        for r in caplog.records
    )


def test_the_rest_of_the_service_keeps_its_umask_while_the_socket_is_made(tmp_path: Path) -> None:
    """The socket file's private mode must not leak into what the service does meanwhile.

    The umask is the process's: a worker started, or a file written, while the socket is
    being bound would otherwise get mode 0600 files (and directories without ``x``).
    """
    broker = SocketBroker(str(tmp_path / "d.sock"))
    seen: set[int] = set()

    def intake(text: str, origin: Origin) -> None:
        """No message is sent."""

    async def watch_umask(started: anyio.Event) -> None:
        while not started.is_set():
            umask = os.umask(0o022)
            os.umask(umask)
            seen.add(umask)
            await anyio.sleep(0)

    async def main() -> None:
        started = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(watch_umask, started)
            await anyio.sleep(0)
            await group.start(broker.run, intake)
            started.set()
            assert broker.path.stat().st_mode & 0o777 == 0o600
            group.cancel_scope.cancel()

    old = os.umask(0o022)
    try:
        anyio.run(main)
    finally:
        os.umask(old)
    assert seen == {0o022}
