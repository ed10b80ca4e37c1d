"""The socket broker's input bounds: line length, clients, depth, and bugs per line."""

from __future__ import annotations

import json
import logging
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
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await third.receive()
        await first.aclose()
        await third.aclose()
        with anyio.fail_after(10):
            while True:  # the freed place is taken again once the broker saw the close
                fourth = await anyio.connect_unix(path)
                try:
                    await request(fourth, b'{"control": "c", "reply_to": "r"}\n')
                    break
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    continue
                finally:
                    await fourth.aclose()
        await second.aclose()

    with caplog.at_level(logging.WARNING, logger="dispatcher.socket"):
        serve(tmp_path, scenario, max_clients=2)
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
