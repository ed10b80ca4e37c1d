"""The async control client over real PostgreSQL and a socket, against fake services.

The sync tests, ``test_control_client.py``, are generated from this file by
``tools/async_to_sync.py`` (``hatch run generate-sync``): edit this one. The tests against
real services are in ``test_control.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import Settings, reset, setup
from dispatcher.control import ControlResult, acontrol, acontrol_with_reply
from dispatcher.publish import BrokerUnavailable, InvalidSubmission
from dispatcher.schema.chunks import split_message
from support.fake_services import Answer, FakeService, FakeSocketService, echo, late, silent
from support.postgres import unique_channel, wait_for_notifies

Conn = psycopg.Connection[Any]
StartFake = Callable[..., FakeService]

UNREACHABLE = "host=127.0.0.1 port=1 dbname=app user=web password=s3cret connect_timeout=2"

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The event loop the tests run in: psycopg's async connections need asyncio."""
    return "asyncio"


@pytest.fixture
def start_fake(pg_dsn: str, channel: str) -> Iterator[StartFake]:
    """Start fake services on this test's channel: ``start_fake(name, answer)``."""
    started: list[FakeService] = []

    def start(name: str, answer: Answer = echo) -> FakeService:
        started.append(FakeService(pg_dsn, channel, f"{channel}-{name}", answer))
        return started[-1]

    yield start
    for service in started:
        service.stop()


def messages(listener: Conn, count: int, timeout: float = 5) -> list[tuple[str, Any]]:
    """The next *count* notifications on *listener*: (channel, decoded payload)."""
    return [(n.channel, json.loads(n.payload)) for n in wait_for_notifies(listener, count, timeout)]


def nothing_more(listener: Conn) -> bool:
    return wait_for_notifies(listener, 1, timeout=0.3) == []


@pytest.fixture
def unreachable(channel: str) -> Iterator[Callable[..., Settings]]:
    """Configure pg_notify on a database that cannot be reached, and a socket if given."""

    def configure(socket_path: Path | None = None) -> Settings:
        brokers: dict[str, Any] = {"pg_notify": {"conninfo": UNREACHABLE, "channels": [channel]}}
        if socket_path is not None:
            brokers["socket"] = {"path": str(socket_path)}
        return setup({"version": 1, "brokers": brokers})

    yield configure
    reset()


def assert_one_clear_sentence(message: str) -> None:
    assert message.startswith(
        "cannot connect to PostgreSQL at 127.0.0.1, port 1, database 'app', user 'web': "
    )
    assert "s3cret" not in message
    assert "\n" not in message


async def test_control_sends_the_command_and_asks_for_no_reply(
    configured: Settings, listener: Conn, channel: str
) -> None:
    assert await acontrol("set_log_level", {"level": "debug"}) is None
    assert messages(listener, 1) == [
        (channel, {"control": "set_log_level", "control_data": {"level": "debug"}})
    ]
    assert nothing_more(listener)


async def test_control_goes_to_the_queue_given(
    configured: Settings, listener: Conn, channel: str
) -> None:
    other = f"{channel}_other"
    listener.execute(f'LISTEN "{other}"')
    await acontrol("alive", queue=other)
    assert messages(listener, 1) == [(other, {"control": "alive", "control_data": {}})]
    assert nothing_more(listener)


async def test_replies_are_collected_until_the_expected_number_came(
    configured: Settings, start_fake: StartFake
) -> None:
    services = [start_fake("one"), start_fake("two")]
    started = time.monotonic()
    result = await acontrol_with_reply(
        "running", {"task": "myapp.tasks.x"}, expected_replies=2, timeout=10
    )
    assert time.monotonic() - started < 5  # it did not wait for the timeout
    assert isinstance(result, ControlResult)
    assert (result.command, result.expected, result.complete) == ("running", 2, True)
    assert sorted(reply["node_id"] for reply in result.replies) == [s.node_id for s in services]
    for service in services:
        [message] = service.received
        assert message["control"] == "running"
        assert message["control_data"] == {"task": "myapp.tasks.x"}
        assert message["reply_to"].startswith("reply_to_")
    assert services[0].received[0]["reply_to"] == services[1].received[0]["reply_to"]


async def test_without_expected_replies_the_services_on_the_channel_are_waited_for(
    configured: Settings, start_fake: StartFake, pg_dsn: str
) -> None:
    answering, quiet = start_fake("a"), start_fake("q", silent)
    # A service on another channel in the same database would never get the command.
    elsewhere = FakeService(pg_dsn, unique_channel(), "elsewhere", silent)
    try:
        started = time.monotonic()
        result = await acontrol_with_reply("alive", timeout=1)
        assert time.monotonic() - started >= 0.9  # it waited for the quiet one
    finally:
        elsewhere.stop()
    assert sorted(result.expected_nodes) == sorted([answering.node_id, quiet.node_id])
    assert result.expected == 2
    assert [reply["node_id"] for reply in result.replies] == [answering.node_id]
    assert quiet.node_id in result.missing
    assert answering.node_id not in result.missing
    assert not result.complete


async def test_two_services_sharing_a_node_id_each_need_a_reply(
    configured: Settings, pg_dsn: str, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Two replicas with one node id, one of them stuck: its twin's reply was taken for both,
    # and result.missing was empty with 1 of 2 replies.
    node = f"{channel}-twin"
    twins = [FakeService(pg_dsn, channel, node), FakeService(pg_dsn, channel, node, silent)]
    try:
        result = await acontrol_with_reply("alive", timeout=1)
        twins[1].stop()
        twins[1] = FakeService(pg_dsn, channel, node)
        both = await acontrol_with_reply("alive", timeout=10)
    finally:
        for twin in twins:
            twin.stop()
    assert (result.expected_nodes, len(result.replies)) == ([node, node], 1)
    assert (result.missing, result.complete) == ([node], False)
    assert result.duplicates == [node]
    assert (both.missing, both.duplicates, both.complete) == ([], [node], True)
    warnings = [r.getMessage() for r in caplog.records if r.name == "dispatcher.control"]
    assert (
        warnings
        == [
            f"more than one service has the node id {node!r}: their replies cannot be told apart; "
            "give each its own (service.node_id, or the DISPATCHER_NODE_ID environment variable)"
        ]
        * 2
    )


async def test_a_service_of_many_channels_is_waited_for_briefly_and_never_missing(
    configured: Settings, start_fake: StartFake, pg_dsn: str
) -> None:
    # Its connection's name cannot tell whether it listens on this channel: the digest of
    # its 200 channels matches any channel. It was counted as one that must answer: the
    # client waited the whole timeout for it and reported it missing.
    answering = start_fake("a")
    crowded = [unique_channel() for _ in range(200)]
    elsewhere = FakeService(pg_dsn, crowded[0], "many-channels", silent, also=crowded[1:])
    try:
        started = time.monotonic()
        result = await acontrol_with_reply("alive", timeout=10)
        waited = time.monotonic() - started
    finally:
        elsewhere.stop()
    assert waited < 5
    assert (result.expected_nodes, result.uncertain_nodes) == (
        [answering.node_id],
        ["many-channels"],
    )
    assert [reply["node_id"] for reply in result.replies] == [answering.node_id]
    assert (result.missing, result.unexpected, result.unconfirmed) == ([], [], ["many-channels"])
    assert result.complete


async def test_a_service_of_many_channels_that_gets_the_command_is_heard(
    configured: Settings, pg_dsn: str, channel: str
) -> None:
    # The only service on the channel listens on many: it is waited for until it answers.
    crowded = [unique_channel() for _ in range(200)]
    service = FakeService(pg_dsn, channel, f"{channel}-many", late, also=crowded)
    try:
        result = await acontrol_with_reply("alive", timeout=10)
    finally:
        service.stop()
    assert (result.expected_nodes, result.uncertain_nodes) == ([], [service.node_id])
    assert [reply["node_id"] for reply in result.replies] == [service.node_id]
    assert (result.missing, result.unexpected, result.unconfirmed) == ([], [], [])
    assert result.complete
    assert result.settled


async def test_a_reply_from_a_service_not_looked_up_does_not_stand_in_for_one_that_was(
    configured: Settings, start_fake: StartFake, pg_dsn: str, channel: str
) -> None:
    # A dispatcherd service on the same channel answers at once; ours answers later.
    ours = start_fake("ours", late)
    theirs = FakeService(pg_dsn, channel, "theirs", named=False)
    try:
        result = await acontrol_with_reply("alive", timeout=10)
    finally:
        theirs.stop()
    assert result.expected_nodes == [ours.node_id]
    assert sorted(reply["node_id"] for reply in result.replies) == sorted([ours.node_id, "theirs"])
    assert (result.missing, result.unexpected, result.complete) == ([], ["theirs"], True)


async def test_no_reply_within_the_timeout_gives_an_incomplete_result(
    configured: Settings,
) -> None:
    started = time.monotonic()
    result = await acontrol_with_reply("alive", expected_replies=1, timeout=0.5)
    assert 0.45 <= time.monotonic() - started < 5
    assert (result.replies, result.expected, result.complete) == ([], 1, False)


async def test_a_reply_over_the_notify_limit_arrives_whole(
    configured: Settings, start_fake: StartFake
) -> None:
    big = "x" * 20_000

    def chunked(node_id: str, message: dict[str, Any]) -> list[str]:
        return split_message(json.dumps({"node_id": node_id, "tasks": [big]}))

    service = start_fake("big", chunked)
    result = await acontrol_with_reply("running", expected_replies=1, timeout=10)
    assert result.replies == [{"node_id": service.node_id, "tasks": [big]}]
    assert result.skipped == []


@pytest.mark.parametrize("damage", ["incomplete", "contradicting"])
async def test_a_chunked_reply_that_cannot_be_joined_is_noted_as_skipped(
    configured: Settings, start_fake: StartFake, damage: str
) -> None:
    """Its envelopes do not all come, or two of them disagree: said, never silently lost."""

    def damaged(node_id: str, message: dict[str, Any]) -> list[str]:
        envelopes = split_message(json.dumps({"node_id": node_id, "tasks": ["x" * 20_000]}))
        if damage == "incomplete":
            return envelopes[:-1]
        other = json.loads(envelopes[0])
        other["total"] += 1
        return [envelopes[0], json.dumps(other)]

    start_fake("damaged", damaged)
    result = await acontrol_with_reply("running", expected_replies=1, timeout=2)
    assert result.replies == []
    assert len(result.skipped) == 1
    assert result.skipped[0].startswith("skipped a reply: ")
    # (An envelope that never comes looks like one still on its way when the wait ends.)
    ran_out = "the wait ran out (after 2 s) while it was still arriving" in result.skipped[0]
    assert ran_out == (damage == "incomplete")
    assert result.arriving == (damage == "incomplete")


async def test_hostile_payloads_on_the_reply_channel_are_skipped_with_a_reason(
    configured: Settings, start_fake: StartFake
) -> None:
    def hostile_then_good(node_id: str, message: dict[str, Any]) -> list[str]:
        return ["not json", json.dumps({"no": "node id"}), *echo(node_id, message)]

    service = start_fake("hostile", hostile_then_good)
    result = await acontrol_with_reply("alive", expected_replies=1, timeout=10)
    assert [reply["node_id"] for reply in result.replies] == [service.node_id]
    assert len(result.skipped) == 2
    assert all(note.startswith("skipped a reply: ") for note in result.skipped)


async def test_an_invalid_command_is_refused_and_nothing_sent(
    configured: Settings, listener: Conn
) -> None:
    with pytest.raises(InvalidSubmission, match="cannot send control command 'Not valid'"):
        await acontrol("Not valid")
    with pytest.raises(InvalidSubmission, match="cannot send control command 'Not valid'"):
        await acontrol_with_reply("Not valid", expected_replies=1, timeout=0.1)
    assert nothing_more(listener)


def nested(levels: int) -> list[Any]:
    """A list *levels* deep."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            {"limit": 10**5000},
            "control_data.limit: the integer has more than 4300 digits, too many to send "
            "(a service reads integers of at most 4300 digits)",
        ),
        ({"limit": float("nan")}, "control_data.limit: nan is not valid in JSON"),
        (
            {"when": [object()]},
            "control_data.when[0]: a value of type object is not JSON-serialisable",
        ),
        ({"limit": float("inf")}, "control_data.limit: inf is not valid in JSON"),
        ({("a", 1): 1}, "control_data: key ('a', 1) of type tuple cannot be a JSON key"),
        (
            {"args": nested(70)},
            "control_data: nested more than 63 levels deep, or contains itself (too_deep: a "
            "message may nest 64 levels in all)",
        ),
        ({"blob": "x" * (8 * 1024 * 1024)}, "bytes of JSON, over the limit of 8388608"),
        (["uuid"], "control_data: expected a dict, got list"),
    ],
)
async def test_control_data_a_service_could_not_read_is_named_and_nothing_sent(
    configured: Settings, listener: Conn, data: Any, reason: str
) -> None:
    prefix = "cannot send control command 'running': "
    with pytest.raises(InvalidSubmission) as refused:
        await acontrol("running", data)
    assert str(refused.value).startswith(prefix)
    assert str(refused.value).endswith(reason)  # the whole reason but for a size's digits
    with pytest.raises(InvalidSubmission) as refused:
        await acontrol_with_reply("running", data, expected_replies=1, timeout=0.1)
    assert str(refused.value).startswith(prefix)
    assert str(refused.value).endswith(reason)
    assert "\n" not in str(refused.value)
    assert nothing_more(listener)


async def test_unreachable_database_is_one_clear_sentence(
    unreachable: Callable[..., Settings],
) -> None:
    unreachable()
    with pytest.raises(BrokerUnavailable) as caught:
        await acontrol("alive")
    assert_one_clear_sentence(str(caught.value))
    with pytest.raises(BrokerUnavailable) as caught:
        await acontrol_with_reply("alive", timeout=0.1)
    assert_one_clear_sentence(str(caught.value))


async def test_over_the_socket_the_database_is_not_used(
    tmp_path: Path, unreachable: Callable[..., Settings]
) -> None:
    path = tmp_path / "s.sock"
    unreachable(socket_path=path)
    service = FakeSocketService(path, b'{"node_id": "local", "level": "DEBUG"}\n')
    result = await acontrol_with_reply("set_log_level", {"level": "debug"}, timeout=10)
    service.join()
    assert result.replies == [{"node_id": "local", "level": "DEBUG"}]
    assert (result.expected, result.complete) == (1, True)
    [message] = service.received
    assert message["control_data"] == {"level": "debug"}
    assert message["reply_to"].startswith("reply_to_")


async def test_control_over_the_socket_asks_for_no_reply(
    tmp_path: Path, unreachable: Callable[..., Settings]
) -> None:
    path = tmp_path / "s.sock"
    unreachable(socket_path=path)
    service = FakeSocketService(path, b'{"node_id": "local"}\n')
    await acontrol("alive")
    service.join()
    assert service.received == [{"control": "alive", "control_data": {}}]
