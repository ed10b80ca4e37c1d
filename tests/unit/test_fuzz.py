"""Fuzz: tens of thousands of hostile inputs through every reader, in process.

Random bytes, mutated valid messages, nesting far beyond the limit, chunk envelopes that
contradict each other and control messages with odd data go through the intake (of a real
service object, so control commands run too), the chunk assembler, the socket line reader
and the control client's reply decoding. None may cost an internal error, and no exception
may escape a reader that promises to contain it. The inputs are drawn from a fixed seed:
a failure reproduces.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatcher.config import reset, setup
from dispatcher.control import ControlResult
from dispatcher.schema import DecodeError, decode_json, validator
from dispatcher.schema.chunks import ChunkAssembler, ChunkError, split_message
from dispatcher.server.brokers.socket import LineBuffer, LineTooLong
from dispatcher.server.control_answers import MAX_CONTROL_IN_FLIGHT
from dispatcher.server.origin import PG_NOTIFY, Origin
from dispatcher.server.service import Service

SEED = 20_240_917
PER_KIND = 2_000
"""Inputs of each kind; six kinds make 12,000."""

TOKENS = [
    "[", "]", "{", "}", '"', "\\", ",", ":", "-", ".", "e", "0", "NaN", "Infinity", "1e400",
    "9" * 5_000, "\u2028", "\x00", "\ud800", "null", "true", '"__dispatcherd_chunk__"',
    '"control"', '{"a":' * 100, "[" * 3_000, "\\u0000", "\\ud83d", "\xff", " ",
]  # fmt: skip

VALID = [
    '{"task": "app.tasks.work", "uuid": "u1", "args": [1, "x"], "kwargs": {"k": [{}]}}',
    '{"task": "app.tasks.work", "time_pub": 1727354869.51, "timeout": 5, "delay": 0.5}',
    '{"task": "app.tasks.work", "on_duplicate": "serial", "bind": true, "guid": "g"}',
    '{"control": "status", "reply_to": "r1"}',
    '{"control": "running", "reply_to": "r1", "control_data": {"task": "app.tasks.work"}}',
    '{"control": "cancel", "reply_to": "r1", "control_data": {"uuid": "u1"}}',
    '{"__dispatcherd_chunk__": "v1", "message_id": "m", "index": 0, "total": 2, '
    '"payload": "{\\"task\\": "}',
]


def mutate(text: str, rng: random.Random) -> str:
    """*text* with a few random edits: tokens inserted, characters changed, cut, repeated."""
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(text))
        edit = rng.randrange(5)
        if edit == 0:
            text = text[:at] + rng.choice(TOKENS) + text[at:]
        elif edit == 1 and text:
            text = text[:at] + chr(rng.randrange(0x110000)) + text[at + 1 :]
        elif edit == 2:
            text = text[: rng.randint(0, len(text))]
        elif edit == 3:
            end = rng.randint(at, len(text))
            text = text[:at] + text[at:end] * rng.randint(2, 50) + text[end:]
        else:
            text = text[:at] + text[rng.randint(at, len(text)) :]
    return text


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))


def deep(rng: random.Random) -> str:
    depth = rng.choice([65, 66, 100, 999, 1_000, 1_001, rng.randint(65, 20_000)])
    openers = [rng.choice(["[", '{"a":']) for _ in range(depth)]
    closers = "".join("]" if opener == "[" else "}" for opener in reversed(openers))
    inner = "".join(openers) + rng.choice(["1", "[]", "{}", '"x"']) + closers
    if rng.random() < 0.3:
        inner = inner[: rng.randint(0, len(inner))]  # not even closed
    if rng.random() < 0.5:
        return '{"task": "app.tasks.work", "args": [' + inner + "]}"
    return inner


NUMBERS: list[Any] = [-1, 0, 1, 2, 3, 1.0, 2.0, 0.0, 2.5, 9_999, 10_000, 10_001, 10**30, True]
ODD_VALUES: list[Any] = [None, "1", [], {}, -0.0, 1e308, "\ud800", "x" * 70]


def envelope(rng: random.Random, ids: list[str]) -> dict[str, Any]:
    whole = json.dumps({"task": "app.tasks.work", "args": ["y" * rng.randint(0, 20_000)]})
    cut = rng.randint(0, len(whole))
    return {
        "__dispatcherd_chunk__": "v1",
        "message_id": rng.choice(ids),
        "index": rng.choice(NUMBERS + ODD_VALUES[:2]),
        "total": rng.choice(NUMBERS + ODD_VALUES[:2]),
        "payload": rng.choice([whole[:cut], whole[cut:], "", "\ud83d", "\x00", whole]),
    }


def control_message(rng: random.Random, commands: list[str]) -> dict[str, Any]:
    data: Any = rng.choice(
        [
            {},
            {"uuid": rng.choice([*ODD_VALUES, "u1"])},
            {"task": rng.choice([*ODD_VALUES, "app.tasks.work"])},
            {"all": rng.choice([True, False, 1, "yes"])},
            {"task": "app.tasks.work", "args": rng.choice(ODD_VALUES), "delay": 1e300},
            {rng.choice(["level", "x", ""]): rng.choice(ODD_VALUES + NUMBERS)},
            rng.choice(ODD_VALUES + NUMBERS),
        ]
    )
    odd_command = rng.random() < 0.2
    message: dict[str, Any] = {
        "control": rng.choice(["nope", "", "A", "x" * 70] if odd_command else commands)
    }
    for key, valid, odd in (
        ("control_data", data, None),
        ("reply_to", "r1", rng.choice(["a b", "", "x" * 64, 5])),
        ("time_pub", rng.choice([0, 253402300799, 0.5]), rng.choice([-1, 1e300, "now"])),
        ("uuid", "u", rng.choice(["", 7])),
    ):
        if rng.random() < 0.7:
            message[key] = valid if rng.random() < 0.8 else odd
    return message


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = setup(
        {
            "version": 1,
            "brokers": {"socket": {"path": str(tmp_path / "d.sock")}},
            "producers": {"control": {}},
            "service": {"limits": {"max_partial_messages": 50, "max_partial_bytes": 1 << 20}},
        }
    )
    service = Service(settings)
    service.intake.catalogue.learn(frozenset({"app.tasks.work"}))
    yield service
    reset()
    assert "internal_error" not in service.stats.rejected, service.stats.rejected


def test_hostile_inputs_never_cost_an_internal_error(service: Service) -> None:
    anyio.run(feed_hostile_inputs, service)


async def feed_hostile_inputs(service: Service) -> None:
    # Control commands are answered in tasks of the service's own: a task group stands in
    # for the one Service.run opens, and the commands run as the loop gets turns.
    async with anyio.create_task_group() as tasks:
        service.answers.tasks = tasks
        try:
            await feed(service)
        finally:
            service.answers.tasks = None


async def feed(service: Service) -> None:
    rng = random.Random(SEED)
    replies: list[dict[str, Any]] = []
    socket = Origin("socket", reply=lambda reply_to, reply: replies.append(reply))
    receive: Callable[[str], None] = lambda text: service.intake.receive(  # noqa: E731
        text, "fuzz", rng.choice([PG_NOTIFY, socket])
    )
    commands = sorted(
        set(service.control.commands.table) - {"set_log_level"}
    )  # keeps the log as is
    ids = [f"m{n}" for n in range(5)]
    sent = 0
    for _ in range(PER_KIND):
        receive(random_bytes(rng).decode("utf-8", errors="replace"))
        receive(mutate(rng.choice(VALID), rng))
        receive(deep(rng))
        receive(json.dumps(envelope(rng, ids), ensure_ascii=rng.random() < 0.5))
        receive(json.dumps(control_message(rng, commands)))
        receive(mutate(json.dumps(control_message(rng, commands)), rng))
        sent += 6
        await anyio.sleep(0)
    await anyio.wait_all_tasks_blocked()
    assert sent >= 10_000
    rejected = service.stats.rejected
    assert rejected["too_deep"] >= PER_KIND // 2
    assert rejected["not_json"] > 0
    assert rejected["invalid_chunk"] > 0
    assert service.stats.received > 0
    assert replies
    assert all("node_id" in reply for reply in replies)


def test_chunk_assembler_raises_only_chunk_errors() -> None:
    rng = random.Random(SEED + 1)
    assembler = ChunkAssembler(max_messages=20, max_memory=200_000, max_bytes=50_000)
    checker = validator("chunk-envelope")
    ids = [f"m{n}" for n in range(40)]
    taken = 0
    for _ in range(10_000):
        candidate = envelope(rng, ids)
        if not checker.is_valid(candidate):
            continue
        taken += 1
        try:
            whole = assembler.add(candidate)
        except ChunkError:
            continue
        assembler.expire()
        assembler.take_evicted()
        assert whole is None or isinstance(whole, str)
        assert len(assembler) <= 20
        assert assembler.memory <= 200_000 + 2 * 8_000
    assert taken > 1_000


def test_line_reader_raises_only_line_too_long() -> None:
    rng = random.Random(SEED + 2)
    for _ in range(1_000):
        lines = LineBuffer(max_line=rng.choice([10, 1_000, 100_000]))
        fed = bytearray()
        got: list[bytes] = []
        try:
            for _ in range(rng.randint(1, 30)):
                data = rng.choice([random_bytes(rng), b"\n" * rng.randint(1, 3), b"x" * 5_000])
                fed += data
                got += lines.feed(data)
        except LineTooLong:
            assert any(len(line) > lines.max_line for line in bytes(fed).split(b"\n"))
            continue
        assert got == bytes(fed).split(b"\n")[:-1]


def test_control_replies_are_taken_or_skipped() -> None:
    rng = random.Random(SEED + 3)
    result = ControlResult("status")
    texts = [
        '{"node_id": "n1", "x": [1]}',
        *split_message(json.dumps({"node_id": "n2", "big": "z" * 9_000}), limit=2_000),
    ]
    for _ in range(3_000):
        kind = rng.randrange(3)
        if kind == 0:
            payload = mutate(rng.choice(texts), rng)
        elif kind == 1:
            payload = deep(rng)
        else:
            payload = random_bytes(rng).decode("utf-8", errors="replace")
        result.add(payload)  # as the pg_notify client hands it every payload
    for reply in result.replies:
        assert validator("control-reply").is_valid(reply)
    assert result.skipped
    assert result.replies


def test_decode_json_raises_only_decode_errors() -> None:
    rng = random.Random(SEED + 4)
    reasons = set()
    for _ in range(10_000):
        text = mutate(rng.choice(VALID), rng) if rng.random() < 0.7 else deep(rng)
        try:
            decode_json(text if rng.random() < 0.5 else text.encode("utf-8", "surrogatepass"))
        except DecodeError as exc:
            reasons.add(exc.reason)
    assert reasons == {"not_json", "too_deep"}


def test_control_commands_beyond_the_bound_in_flight_are_refused_with_a_reply(
    service: Service,
) -> None:
    """Each control message is answered in a task of its own: a flood of commands that look
    at every task held (sent before any could be answered) is bounded, the rest refused with
    an error reply, not queued; commands that answer at once are never refused so."""
    flood = MAX_CONTROL_IN_FLIGHT + 5
    replies: list[dict[str, Any]] = []
    socket = Origin("socket", reply=lambda reply_to, reply: replies.append(reply))

    async def send_all() -> None:
        async with anyio.create_task_group() as tasks:
            service.answers.tasks = tasks
            try:
                for n in range(flood):  # no checkpoint: none is answered before the last
                    for command in ("running", "alive", "workers"):
                        message = {"control": command, "reply_to": "r", "uuid": f"{command}{n}"}
                        service.intake.receive(json.dumps(message), "fuzz", socket)
                await anyio.wait_all_tasks_blocked()
            finally:
                service.answers.tasks = None

    anyio.run(send_all)
    refused = [reply for reply in replies if "error" in reply]
    assert len(replies) == 3 * flood
    assert len(refused) == 5
    assert all("being answered already" in reply["error"] for reply in refused)
    assert service.stats.rejected["overloaded"] == 5
