"""Replies read by the control client: anyone can NOTIFY the reply channel."""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

import pytest

from dispatcher.control import ControlResult
from dispatcher.control.local import socket_request
from dispatcher.control.result import InvalidReply, parse_reply
from dispatcher.publish import BrokerUnavailable
from dispatcher.publish.socket import SocketPublisher
from dispatcher.schema import MAX_MESSAGE_BYTES, MAX_NESTING_DEPTH
from dispatcher.schema.chunks import split_message


def test_a_valid_reply_is_taken() -> None:
    result = ControlResult("alive", expected=1)
    result.add('{"node_id": "a", "x": 1}')
    assert (result.replies, result.skipped, result.complete) == (
        [{"node_id": "a", "x": 1}],
        [],
        True,
    )


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        ("[" * 5000 + "]" * 5000, f"nested more than {MAX_NESTING_DEPTH} levels deep"),
        ('{"node_id": "a", "x": ' + "[" * 100 + "]" * 100 + "}", "nested more than"),
        ("not json", "not JSON (Expecting value"),
        ('{"node_id": NaN}', "NaN is not valid JSON"),
        (b'{"node_id": "\xff"}', "invalid UTF-8"),
        ('{"x": 1}', "not a control reply (node_id: is required)"),
        ("[1]", "not a control reply"),
    ],
)
def test_hostile_replies_are_skipped_with_a_reason(
    payload: str | bytes, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = ControlResult("alive", expected=1)
    with caplog.at_level(logging.WARNING, logger="dispatcher.control"):
        result.add(payload)
        result.add('{"node_id": "real"}')
    assert result.replies == [{"node_id": "real"}]
    [note] = result.skipped
    assert note.startswith("skipped a reply: ")
    assert said in note
    [record] = caplog.records
    assert record.getMessage() == note
    assert record.exc_info is None


def test_parse_reply_raises_a_value_error() -> None:
    with pytest.raises(InvalidReply):
        parse_reply("{")
    assert issubclass(InvalidReply, ValueError)


def test_chunked_replies_are_joined_and_hostile_ones_skipped_saying_why() -> None:
    result = ControlResult("running", expected=2)
    text = json.dumps({"node_id": "n", "tasks": ["t" * 20_000]})
    for envelope in split_message(text):
        result.add(envelope)
    result.add("[" * 3000 + "]" * 3000)  # not an envelope: a reply, too deep
    envelope = {"__dispatcherd_chunk__": "v1", "message_id": "m", "index": 0.0, "total": 1.0}
    result.add(json.dumps({**envelope, "payload": '{"node_id": "m"}'}))
    result.add(json.dumps({**envelope, "message_id": "o", "index": 3, "payload": "{}"}))
    assert [reply["node_id"] for reply in result.replies] == ["n", "m"]
    assert len(result.skipped) == 2
    assert "nested more than" in result.skipped[0]
    assert "chunk" in result.skipped[1]


def serve_once(path: Path, *pieces: bytes) -> threading.Thread:
    """A one-connection socket server at *path* that answers with *pieces*."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        with server, server.accept()[0] as connection:
            connection.recv(1 << 16)
            for piece in pieces:
                connection.sendall(piece)

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


def serve_refusing(path: Path, reply: bytes) -> threading.Thread:
    """A socket server at *path* that answers one connection with *reply* and closes it,
    reading nothing (as a service with too many socket clients does)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def refuse() -> None:
        with server, server.accept()[0] as connection:
            connection.sendall(reply)

    thread = threading.Thread(target=refuse)
    thread.start()
    return thread


TOO_MANY = {"node_id": "n", "error": "the service has too many socket clients"}
LONG_CONTROL = {"control": "alive", "reply_to": "r", "pad": "x" * (4 << 20)}
"""A message too long to fit in the socket's buffers: its send fails once the server closes."""


def test_the_error_reply_of_a_service_that_closed_before_the_send_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    thread = serve_refusing(path, json.dumps(TOO_MANY).encode() + b"\n")
    line = socket_request(str(path), LONG_CONTROL, timeout=10)
    thread.join()
    assert line is not None
    assert json.loads(line) == TOO_MANY

    path = tmp_path / "t.sock"
    thread = serve_refusing(path, json.dumps(TOO_MANY).encode() + b"\n")
    result = ControlResult("alive")
    SocketPublisher(str(path)).control_with_reply(
        json.dumps(LONG_CONTROL), "r", result, queue=None, expected_replies=None, timeout=10
    )
    thread.join()
    assert result.replies == [TOO_MANY]


def test_a_service_that_closed_before_the_send_saying_nothing_is_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    thread = serve_refusing(path, b"")
    with pytest.raises(BrokerUnavailable, match="cannot send to the service's socket"):
        socket_request(str(path), LONG_CONTROL, timeout=10)
    thread.join()


def test_socket_reply_is_read_across_pieces_up_to_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    thread = serve_once(path, b'{"node_id":', b' "a\xff"}\n{"more": 1}\n')
    line = socket_request(str(path), {"control": "alive", "reply_to": "r"}, timeout=10)
    thread.join()
    assert line == '{"node_id": "a\ufffd"}'


def test_socket_reply_over_the_message_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    thread = serve_once(path, b"x" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(BrokerUnavailable, match=f"over {MAX_MESSAGE_BYTES} bytes"):
        socket_request(str(path), {"control": "alive", "reply_to": "r"}, timeout=10)
    thread.join()


def test_a_reply_too_large_to_take_is_counted_and_said_so_not_taken_for_silence() -> None:
    from dispatcher.server.ctl_reply_notes import shortfall

    result = ControlResult("running", expected=2, expected_nodes=["node-a", "node-b"])
    result.add('{"node_id": "node-b"}')
    text = json.dumps({"node_id": "node-a", "x": "y" * MAX_MESSAGE_BYTES})
    for envelope in split_message(text):
        result.add(envelope)
    result.finish()
    assert (len(result.replies), result.too_large, result.complete) == (1, 1, False)
    [note] = result.skipped
    assert note.startswith("skipped a reply: a chunked reply too large to take: chunked message")
    assert shortfall(result) == (
        "1 of 2 expected replies; 1 reply came too large to take (over "
        f"{MAX_MESSAGE_BYTES} bytes: from a service of another version?), in place of those "
        "of node-a"
    )
    silent = ControlResult("running", expected=1, expected_nodes=["node-a"])
    assert shortfall(silent) == "0 of 1 expected replies; no answer from node-a"
