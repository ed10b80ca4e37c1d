"""dispatcherd's socket chunks, both ways: 1 kB lines of chunk envelopes, joined by the reader.

The service's socket broker cuts replies over 1 kB into envelopes, one per line; the control
client cuts requests the same way and joins the replies, whichever service sent them.
Malformed replies are skipped saying why, and ``dispatcherctl`` exits non-zero.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatcher.config import reset
from dispatcher.control import ControlResult
from dispatcher.control.local import socket_request
from dispatcher.control.result import ReplyChunks
from dispatcher.schema import MAX_MESSAGE_BYTES, load_schema, validator
from dispatcher.schema.chunks import (
    MAX_CHUNKS,
    SOCKET_CHUNK_BYTES,
    ChunkAssembler,
    socket_lines,
    split_message,
)
from dispatcher.server import ctl
from dispatcher.server.brokers.socket import SocketBroker
from dispatcher.server.ctl_exits import EXIT_MISSING, EXIT_OK
from dispatcher.server.origin import Origin

ENVELOPE = validator("chunk-envelope")


def join(lines: list[str]) -> str:
    """Join envelopes as any reader does (here: the service's assembler)."""
    assembler = ChunkAssembler()
    wholes = [assembler.add(json.loads(line)) for line in lines]
    assert wholes[:-1] == [None] * (len(lines) - 1)
    assert wholes[-1] is not None
    return wholes[-1]


# -- the format ------------------------------------------------------------------------------


def test_a_text_up_to_1_kB_is_one_line_and_a_longer_one_envelopes_of_at_most_1_kB() -> None:
    assert SOCKET_CHUNK_BYTES == 1024
    short = json.dumps({"node_id": "n", "x": "y" * 990})
    assert len(short) <= 1024
    assert socket_lines(short) == [short]
    text = json.dumps({"node_id": "n", "quotes": '"\\' * 3000, "x": "é" * 2000})
    lines = socket_lines(text)
    assert len(lines) > 1
    for line in lines:
        assert len(line.encode()) <= SOCKET_CHUNK_BYTES
        assert "\n" not in line
        assert ENVELOPE.is_valid(json.loads(line))
    assert join(lines) == text


def test_a_huge_text_takes_larger_envelopes_rather_than_more_than_the_schema_allows() -> None:
    text = json.dumps({"node_id": "n", "x": '"' * 6_000_000})
    lines = socket_lines(text)
    assert len(lines) <= MAX_CHUNKS
    assert all(ENVELOPE.is_valid(json.loads(line)) for line in lines)
    assert join(lines) == text


# -- the reply collector ---------------------------------------------------------------------


def test_a_chunked_reply_is_taken_once_its_last_envelope_comes_in_any_order() -> None:
    reply = {"node_id": "n", "worker-0": {"args": ["x" * 5000]}}
    lines = socket_lines(json.dumps(reply))
    result = ControlResult("running", expected=1)
    for line in reversed(lines):
        assert result.replies == []
        result.add(line)
    result.finish()
    assert (result.replies, result.skipped) == ([reply], [])


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (
            {"__dispatcherd_chunk__": "v2", "message_id": "m", "index": 0, "total": 2},
            "an invalid chunk envelope (__dispatcherd_chunk__: must be 'v1'",
        ),
        (
            {"__dispatcherd_chunk__": "v1", "message_id": "m", "index": 2, "total": 2},
            "an invalid chunk envelope (payload: is required",
        ),
        (
            {
                "__dispatcherd_chunk__": "v1",
                "message_id": "m",
                "index": 3,
                "total": 2,
                "payload": "",
            },
            "a chunked reply: chunk index 3 is not below its total 2",
        ),
        (
            {
                "__dispatcherd_chunk__": "v1",
                "message_id": "m",
                "index": 0,
                "total": 1,
                "payload": "{",
            },
            "not JSON",
        ),
        (
            {
                "__dispatcherd_chunk__": "v1",
                "message_id": "m",
                "index": 0,
                "total": 1,
                "payload": "{}",
            },
            "not a control reply (node_id: is required)",
        ),
    ],
)
def test_malformed_envelopes_are_skipped_saying_what_is_wrong(
    payload: dict[str, Any], said: str
) -> None:
    result = ControlResult("alive", expected=1)
    result.add(json.dumps(payload))
    result.add('{"node_id": "real"}')
    assert result.replies == [{"node_id": "real"}]
    [note] = result.skipped
    assert note.startswith("skipped a reply: " + said), note


def test_envelopes_missing_at_the_end_are_noted() -> None:
    result = ControlResult("running", expected=1)
    for text in ('{"node_id": "a", "x": "' + "y" * 3000 + '"}', '{"node_id": "b"}' + " " * 2000):
        for line in socket_lines(text)[:-1]:
            result.add(line)
    result.finish()
    assert result.skipped == [
        "skipped a reply: 2 chunked replies are missing some of their chunk envelopes"
    ]
    assert not result.complete


def test_a_reply_that_merely_mentions_the_chunk_key_is_a_reply() -> None:
    chunks = ReplyChunks()
    text = json.dumps({"node_id": "n", "worker-0": {"args": ["__dispatcherd_chunk__"]}})
    assert chunks.join(text) == text
    assert chunks.join(text.encode()) == text.encode()


def test_a_chunked_reply_is_bounded() -> None:
    result = ControlResult("running", expected=1)
    for line in split_message(json.dumps({"node_id": "n", "x": "y" * (9 << 20)})):
        result.add(line)
    assert result.replies == []
    [note] = result.skipped
    assert note.endswith(f"exceeds {MAX_MESSAGE_BYTES} bytes; it is dropped")


# -- the socket client, against a fake service ------------------------------------------------


class FakeService:
    """A socket that records what each connection sends and answers with fixed bytes."""

    def __init__(self, path: Path, answer: bytes, keep_open: bool = False) -> None:
        self.path = path
        self.answer = answer
        self.keep_open = keep_open
        """Keep each connection open after answering, until the client closes it."""
        self.received: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                data = b""
                while not data.endswith(b"\n") or b'"reply_to' not in self._whole(data):
                    piece = connection.recv(1 << 16)
                    if not piece:
                        break
                    data += piece
                self.received.append(data)
                connection.sendall(self.answer)
                if self.keep_open:
                    connection.recv(1)  # returns once the client closes

    @staticmethod
    def _whole(data: bytes) -> bytes:
        lines = data.decode().splitlines()
        if len(lines) == 1 or "__dispatcherd_chunk__" not in lines[0]:
            return data
        assembler = ChunkAssembler()
        whole = [assembler.add(json.loads(line)) for line in lines]
        return (whole[-1] or "").encode()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[list[FakeService]]:
    started: list[FakeService] = []
    yield started
    for service in started:
        service.close()


def test_socket_request_sends_1_kB_envelopes_and_joins_the_chunked_reply(
    tmp_path: Path, fake: list[FakeService]
) -> None:
    reply = json.dumps({"node_id": "n", "worker-0": {"args": ["r" * 4000]}})
    answer = "".join(line + "\n" for line in socket_lines(reply)).encode()
    service = FakeService(tmp_path / "s.sock", answer + b'{"node_id": "later"}\n')
    fake.append(service)
    request = {"control": "running", "reply_to": "r", "control_data": {"args": ["q" * 3000]}}
    assert socket_request(str(service.path), request, timeout=10) == reply
    [sent] = service.received
    lines = sent.decode().splitlines()
    assert len(lines) > 1
    assert all(len(line.encode()) <= SOCKET_CHUNK_BYTES for line in lines)
    assert json.loads(join(lines)) == request


def ctl_config(tmp_path: Path, path: Path) -> Path:
    config = tmp_path / "ctl.json"
    config.write_text(json.dumps({"version": 1, "brokers": {"socket": {"path": str(path)}}}))
    return config


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"not json\n", "skipped a reply: not JSON"),
        (
            socket_lines(json.dumps({"node_id": "n", "x": "y" * 3000}))[0].encode() + b"\n",
            "skipped a reply: a chunked reply is missing some of its chunk envelopes",
        ),
        (
            b'{"__dispatcherd_chunk__": "v1", "message_id": "m", "index": 0}\n',
            "skipped a reply: an invalid chunk envelope (",
        ),
    ],
)
def test_dispatcherctl_says_a_reply_is_malformed_and_exits_1(
    tmp_path: Path,
    fake: list[FakeService],
    capsys: pytest.CaptureFixture[str],
    answer: bytes,
    said: str,
) -> None:
    service = FakeService(tmp_path / "s.sock", answer)
    fake.append(service)
    try:
        status = ctl.main(
            ["--timeout", "2", "alive", "--config", str(ctl_config(tmp_path, service.path))]
        )
    finally:
        reset()
    out, err = capsys.readouterr()
    assert status == EXIT_MISSING
    assert f"dispatcherctl: {said}" in err
    assert "dispatcherctl: 0 of 1 expected replies" in err
    assert "(0 of 1 replies)" in out


def test_dispatcherctl_says_the_wait_ran_out_while_a_reply_was_still_arriving(
    tmp_path: Path, fake: list[FakeService], capsys: pytest.CaptureFixture[str]
) -> None:
    """A long reply still coming when ``--timeout`` ran out: not "missing", not silence."""
    first = socket_lines(json.dumps({"node_id": "n", "x": "y" * 3000}))[0]
    service = FakeService(tmp_path / "s.sock", first.encode() + b"\n", keep_open=True)
    fake.append(service)
    try:
        status = ctl.main(
            ["--timeout", "0.5", "running", "--config", str(ctl_config(tmp_path, service.path))]
        )
    finally:
        reset()
    _, err = capsys.readouterr()
    assert status == EXIT_MISSING
    assert (
        "dispatcherctl: skipped a reply: the wait ran out (after 0.5 s) while it was still "
        "arriving, in chunk envelopes; a longer timeout (dispatcherctl --timeout) lets it come "
        "whole\n"
    ) in err
    assert err.endswith(
        "dispatcherctl: 0 of 1 expected replies; a reply was still arriving when the wait ran "
        "out: a longer --timeout lets it come whole\n"
    ), err


def test_replies_still_arriving_when_the_wait_ran_out_are_counted_and_said_so() -> None:
    result = ControlResult("running", expected=1)
    for text in ('{"node_id": "a", "x": "' + "y" * 3000 + '"}', '{"node_id": "b"}' + " " * 2000):
        for line in socket_lines(text)[:-1]:
            result.add(line)
    result.finish(ran_out_after=2)
    assert result.arriving == 2
    assert result.skipped == [
        "skipped 2 replies: the wait ran out (after 2 s) while they were still arriving, in "
        "chunk envelopes; a longer timeout (dispatcherctl --timeout) lets them come whole"
    ]


def test_dispatcherctl_says_a_reply_too_large_to_take_came_rather_than_none(
    tmp_path: Path, fake: list[FakeService], capsys: pytest.CaptureFixture[str]
) -> None:
    """A service of another version answered over the limit: not silence ("no answer")."""
    reply = {"node_id": "n", "worker-0": {"uuid": "u", "task": "t", "x": "y" * MAX_MESSAGE_BYTES}}
    answer = "".join(line + "\n" for line in socket_lines(json.dumps(reply))).encode()
    service = FakeService(tmp_path / "s.sock", answer)
    fake.append(service)
    try:
        status = ctl.main(
            ["--timeout", "5", "running", "--config", str(ctl_config(tmp_path, service.path))]
        )
    finally:
        reset()
    _, err = capsys.readouterr()
    assert status == EXIT_MISSING
    assert err.endswith(
        "dispatcherctl: 0 of 1 expected replies; 1 reply came too large to take (over "
        f"{MAX_MESSAGE_BYTES} bytes: from a service of another version?)\n"
    ), err
    assert "skipped a reply: a chunked reply too large to take: " in err
    assert "no answer" not in err


def test_dispatcherctl_shows_a_chunked_reply_whole(
    tmp_path: Path, fake: list[FakeService], capsys: pytest.CaptureFixture[str]
) -> None:
    reply = {"node_id": "n", "worker-0": {"uuid": "u", "task": "t", "args": ["a" * 5000]}}
    answer = "".join(line + "\n" for line in socket_lines(json.dumps(reply))).encode()
    service = FakeService(tmp_path / "s.sock", answer)
    fake.append(service)
    try:
        status = ctl.main(
            ["running", "--json", "--config", str(ctl_config(tmp_path, service.path))]
        )
    finally:
        reset()
    out, err = capsys.readouterr()
    assert (status, err) == (EXIT_OK, "")
    assert json.loads(out) == [reply]


# -- the service's socket broker ---------------------------------------------------------------


def test_the_broker_answers_a_chunked_request_on_its_connection_in_1_kB_envelopes(
    tmp_path: Path,
) -> None:
    delivered: list[str] = []
    big = {"node_id": "n", "worker-0": {"args": ["b" * 6000]}}
    assembler = ChunkAssembler()

    def intake(text: str, origin: Origin) -> None:
        """Stands for the intake: joins envelopes, answers the control message."""
        delivered.append(text)
        whole = assembler.add(json.loads(text))
        if whole is not None:
            assert origin.reply is not None
            origin.reply(json.loads(whole)["reply_to"], big)
            origin.reply("again", {"node_id": "n"})

    broker = SocketBroker(str(tmp_path / "d.sock"))
    request = {"control": "running", "reply_to": "r", "control_data": {"args": ["q" * 3000]}}
    sent = socket_lines(json.dumps(request))
    received = b""

    async def main() -> None:
        nonlocal received
        async with anyio.create_task_group() as group:
            await group.start(broker.run, intake)
            with anyio.fail_after(20):
                async with await anyio.connect_unix(broker.path) as stream:
                    await stream.send("".join(line + "\n" for line in sent).encode())
                    while not received.endswith(b'{"node_id":"n"}\n'):
                        received += await stream.receive()
            group.cancel_scope.cancel()

    anyio.run(main)
    assert delivered == sent
    lines = received.decode().splitlines()
    assert lines[-1] == '{"node_id":"n"}'
    assert len(lines) > 2
    assert all(len(line.encode()) <= SOCKET_CHUNK_BYTES for line in lines)
    assert json.loads(join(lines[:-1])) == big


def test_the_envelope_count_bound_is_the_schemas() -> None:
    assert load_schema("chunk-envelope")["properties"]["total"]["maximum"] == MAX_CHUNKS
