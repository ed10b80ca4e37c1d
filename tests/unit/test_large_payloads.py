"""Large payloads are decoded off the event loop, each source's payloads still in order.

Decoded on the loop, a message of megabytes held up every other message (and everything
else) for the time of its decoding, up to a second: a small message from another channel,
received just after it, became a job only after it.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest

from dispatcher.config import Limits
from dispatcher.publish import split_message
from dispatcher.server.brokers import BrokerBase, Settled
from dispatcher.server.intake import Intake
from dispatcher.server.jobs import Job
from dispatcher.server.large_payloads import LARGE_PAYLOAD_CHARS, CollectionPause
from dispatcher.server.origin import Origin
from dispatcher.server.rejection import Rejected
from dispatcher.server.settlement import Settlements
from dispatcher.server.stats import ServiceStats

TASK = "app.tasks.work"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingPool:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> bool:
        self.jobs.append(job)
        return True

    @property
    def uuids(self) -> list[str]:
        return [job.uuid for job in self.jobs]


@pytest.fixture
def pool() -> RecordingPool:
    return RecordingPool()


@pytest.fixture
def stats() -> ServiceStats:
    return ServiceStats()


@pytest.fixture
async def intake(pool: RecordingPool, stats: ServiceStats) -> AsyncIterator[Intake]:
    """An intake whose large payloads are decoded in a worker thread (as the service runs it)."""
    intake = Intake(pool, stats, chunk_expiry=60)  # type: ignore[arg-type]
    intake.catalogue.learn(frozenset({TASK}))
    async with anyio.create_task_group() as task_group:
        await task_group.start(intake.large.run)
        yield intake
        task_group.cancel_scope.cancel()


def message(uuid: str, size: int = 0) -> str:
    """A task message; with *size*, of at least that many characters of dense JSON."""
    args = [[index, 2.5, "x", None, {"a": index}] for index in range(size // 30)]
    return json.dumps({"task": TASK, "uuid": uuid, "args": args}, separators=(",", ":"))


BIG = 3_000_000
"""Characters of the large messages: some 0.3 s to decode on an idle machine."""


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(60):
        while not condition():
            await anyio.sleep(0.005)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_large_message_holds_up_neither_other_channels_nor_the_loop(
    intake: Intake, pool: RecordingPool
) -> None:
    intake.receive(message("big", BIG), "one")
    intake.receive(message("other"), "two")
    intake.receive(message("after-big"), "one")
    assert pool.uuids == ["other"]  # at once: "after-big" waits for "big", of its channel
    turns = 0
    while len(pool.jobs) < 3:  # the loop goes on while "big" is decoded
        await anyio.sleep(0)
        turns += 1
    assert pool.uuids == ["other", "big", "after-big"]
    assert turns > 10
    assert json.loads(pool.jobs[1].line)["message"]["args"][1][0] == 1


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_chunked_large_message_is_decoded_off_the_loop_once_whole(
    intake: Intake, pool: RecordingPool
) -> None:
    *first, last = split_message(message("big", BIG))
    for chunk in first:
        intake.receive(chunk, "one")
    intake.receive(message("before-last-chunk"), "one")
    intake.receive(last, "one")
    intake.receive(message("other"), "two")
    intake.receive(message("after-big"), "one")
    assert pool.uuids == ["before-last-chunk", "other"]
    await wait_for(lambda: len(pool.jobs) == 4)
    assert pool.uuids == ["before-last-chunk", "other", "big", "after-big"]


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_messages_held_behind_large_ones_keep_their_order(
    intake: Intake, pool: RecordingPool
) -> None:
    sent = []
    for index in range(6):
        uuid = f"m{index}"
        size = LARGE_PAYLOAD_CHARS * 2 if index in (1, 3) else 0
        intake.receive(message(uuid, size), "one")
        sent.append(uuid)
    assert intake.waiting == 5
    await wait_for(lambda: len(pool.jobs) == 6)
    assert pool.uuids == sent
    assert intake.waiting == 0


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_large_payload_that_is_refused_costs_itself_only(
    intake: Intake, pool: RecordingPool, stats: ServiceStats
) -> None:
    intake.receive("[" * 10 + " " * LARGE_PAYLOAD_CHARS, "one")  # not JSON
    unknown = message("unknown", LARGE_PAYLOAD_CHARS).replace(TASK, "app.tasks.nope")
    intake.receive(unknown, "one")
    intake.receive(message("after"), "one")
    await wait_for(lambda: len(pool.jobs) == 1)
    assert pool.uuids == ["after"]
    assert stats.rejected["not_json"] == 1
    assert stats.rejected["unknown_task"] == 1


def test_without_its_runner_a_large_message_is_decoded_as_it_comes(
    pool: RecordingPool, stats: ServiceStats
) -> None:
    intake = Intake(pool, stats, chunk_expiry=60)  # type: ignore[arg-type]
    intake.catalogue.learn(frozenset({TASK}))
    intake.receive(message("big", LARGE_PAYLOAD_CHARS * 2), "one")
    assert pool.uuids == ["big"]


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_connection_waits_for_its_large_payload_to_be_taken(
    intake: Intake, pool: RecordingPool
) -> None:
    """The socket reads a connection's next line once the last one is answered."""
    begun: list[str] = []
    ended: list[str] = []

    def answering() -> Callable[[], None]:
        begun.append("big")
        return lambda: ended.append(f"big, with {len(pool.jobs)} job")

    origin = Origin("socket", channel="socket:1", answering=answering)
    intake.receive(message("big", LARGE_PAYLOAD_CHARS * 2), "socket:1", origin)
    assert begun == ["big"]
    assert ended == []
    await wait_for(lambda: bool(ended))
    assert ended == ["big, with 1 job"]
    assert pool.uuids == ["big"]


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_what_waits_when_the_service_stops_is_given_back(
    intake: Intake, pool: RecordingPool
) -> None:
    intake.receive(message("big", BIG), "one")
    intake.receive(message("after-big"), "one")
    assert intake.waiting == 2
    intake.stop_accepting()
    assert intake.waiting == 0
    await anyio.sleep(0.5)
    assert pool.jobs == []


class Spool(BrokerBase):
    """A durable broker that records how its deliveries were settled."""

    def __init__(self) -> None:
        super().__init__("spool")
        self.settled: list[Settled] = []

    async def acknowledge(self, settled: Sequence[Settled]) -> None:
        self.settled.extend(settled)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_durable_job_refused_over_max_held_bytes_goes_back_to_its_queue(
    pool: RecordingPool, stats: ServiceStats, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused, not rejected: the broker delivers it again later (docs/durable-queues.md)."""
    spool = Spool()
    settlements = Settlements([spool])
    limits = Limits(max_held_bytes=LARGE_PAYLOAD_CHARS * 5)
    intake = Intake(pool, stats, 60, limits=limits, settlements=settlements)  # type: ignore[arg-type]
    intake.catalogue.learn(frozenset({TASK}))
    async with anyio.create_task_group() as task_group:
        await task_group.start(intake.large.run)
        for index in range(4):  # two fit in max_held_bytes; the others are refused
            origin = Origin("spool", receipt=f"r{index}")
            intake.receive(message(f"big{index}", LARGE_PAYLOAD_CHARS * 2), "q", origin)
        too_big = message("too-big", LARGE_PAYLOAD_CHARS * 6)
        intake.receive(too_big, "q", Origin("spool", receipt="r-too-big"))
        await wait_for(lambda: len(pool.jobs) == 2)
        task_group.cancel_scope.cancel()
    await settlements.flush()
    outcomes = {settled.receipt: settled.outcome for settled in spool.settled}
    assert outcomes == {"r2": "refused", "r3": "refused", "r-too-big": "rejected"}
    assert pool.uuids == ["big0", "big1"]
    assert stats.rejected["overloaded"] == 2
    assert stats.rejected["oversized"] == 1  # alone larger than the limit: never holdable
    logged = [record.getMessage() for record in caplog.records]
    assert logged[0].startswith("refused message on channel q, back to its queue: too many")
    assert logged[-1].startswith("rejected message on channel q: the message is ")


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_large_payload_does_not_wait_for_the_threads_of_an_embedding_application(
    intake: Intake, pool: RecordingPool
) -> None:
    """Decoded in a thread of its own, not one of anyio's default 40, shared by the process.

    While the application's blocking calls held all 40, the payload, and every later one of
    its source, waited for one of them, the garbage collector off the while.
    """
    release = threading.Event()
    limiter = anyio.to_thread.current_default_thread_limiter()
    async with anyio.create_task_group() as application:
        for _ in range(int(limiter.total_tokens)):
            application.start_soon(anyio.to_thread.run_sync, release.wait)
        try:
            with anyio.fail_after(30):
                while limiter.borrowed_tokens < limiter.total_tokens:
                    await anyio.sleep(0.01)
            intake.receive(message("big", LARGE_PAYLOAD_CHARS * 2), "one")
            intake.receive(message("after-big"), "one")
            with anyio.move_on_after(10):
                while len(pool.jobs) < 2:
                    await anyio.sleep(0.01)
            assert pool.uuids == ["big", "after-big"]
            assert gc.isenabled()
        finally:
            release.set()


def test_a_decoding_thread_that_starts_after_its_wait_was_given_up_leaves_collection_on() -> None:
    pause = CollectionPause()
    pause.begin()
    assert not gc.isenabled()
    pause.end()
    assert gc.isenabled()
    late = CollectionPause()
    late.end()  # its wait for the thread was cancelled
    late.begin()  # then the thread started
    assert gc.isenabled()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_control_command_refused_behind_a_large_payload_is_answered(
    pool: RecordingPool, stats: ServiceStats
) -> None:
    """Its client hears that it was refused (``overloaded``), rather than wait for a reply."""
    answered: list[tuple[dict[str, Any], str, Rejected | None]] = []
    big, filler = message("big", BIG), message("filler", 2000)
    intake = Intake(
        pool,  # type: ignore[arg-type]
        stats,
        chunk_expiry=60,
        on_control=lambda message, channel, origin, refused: answered.append(
            (message, channel, refused)
        ),
        limits=Limits(max_held_bytes=len(big) + len(filler) + 10),
    )
    intake.catalogue.learn(frozenset({TASK}))
    control = {"control": "alive", "reply_to": "replies"}
    async with anyio.create_task_group() as task_group:
        await task_group.start(intake.large.run)
        intake.receive(big, "one")
        intake.receive(filler, "one")  # fills what may be held behind it
        intake.receive(json.dumps(control), "one")
        [(said, channel, refused)] = answered
        assert (said, channel) == (control, "one")
        assert refused is not None
        assert refused.reason == "overloaded"
        await wait_for(lambda: len(pool.jobs) == 2)
        task_group.cancel_scope.cancel()
    assert stats.rejected["overloaded"] == 1


def answering_intake(
    pool: RecordingPool, stats: ServiceStats, max_held_bytes: int
) -> tuple[Intake, list[tuple[dict[str, Any], Rejected | None]]]:
    """An intake that notes the control messages it answers (message, and why refused)."""
    answered: list[tuple[dict[str, Any], Rejected | None]] = []
    intake = Intake(
        pool,  # type: ignore[arg-type]
        stats,
        chunk_expiry=60,
        on_control=lambda message, channel, origin, refused: answered.append((message, refused)),
        limits=Limits(max_held_bytes=max_held_bytes),
    )
    intake.catalogue.learn(frozenset({TASK}))
    return intake, answered


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_chunked_message_with_a_slice_refused_behind_a_large_one_is_refused_whole(
    pool: RecordingPool, stats: ServiceStats
) -> None:
    """Its other slices waited: once whole, a task is not run, a control command answered."""
    big = message("big", BIG)
    task = split_message(message("chunked", 3000), 2000)
    control = {"control": "alive", "reply_to": "replies", "padding": "x" * 3000}
    command = split_message(json.dumps(control), 2000)
    held = len(task[0]) + len(command[0])
    intake, answered = answering_intake(pool, stats, len(big) + held)
    async with anyio.create_task_group() as task_group:
        await task_group.start(intake.large.run)
        intake.receive(big, "one")
        intake.receive(task[0], "one")  # held
        intake.receive(command[0], "one")  # held: what may be held is full
        for chunk in [*task[1:], *command[1:]]:
            intake.receive(chunk, "one")  # refused
        assert answered == []  # not whole yet
        await wait_for(lambda: bool(answered))
        [(said, refused)] = answered
        assert said == control
        assert refused is not None
        assert refused.reason == "overloaded"
        task_group.cancel_scope.cancel()
    assert pool.uuids == ["big"]
    assert len(intake.chunks) == 0


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_large_refused_control_command_is_read_in_the_decoding_thread(
    pool: RecordingPool, stats: ServiceStats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole, its text is large: it is decoded off the loop, then answered."""
    big = message("big", BIG)
    data = {"args": [[index, "x" * 20] for index in range(LARGE_PAYLOAD_CHARS // 20)]}
    control = {"control": "running", "reply_to": "replies", "control_data": data}
    text = json.dumps(control)
    first, *rest = split_message(text, len(text) // 2 + 200)
    assert len(first) < LARGE_PAYLOAD_CHARS <= len(text)
    intake, answered = answering_intake(pool, stats, len(big) + len(first))
    on_the_loop: list[int] = []

    def decode_json(text: str) -> Any:
        on_the_loop.append(len(text))
        return json.loads(text)

    monkeypatch.setattr("dispatcher.server.intake_decoding.decode_json", decode_json)
    async with anyio.create_task_group() as task_group:
        await task_group.start(intake.large.run)
        intake.receive(big, "one")
        intake.receive(first, "one")  # held
        for chunk in rest:
            intake.receive(chunk, "one")  # refused
        await wait_for(lambda: bool(answered))
        [(said, refused)] = answered
        assert said == control
        assert refused is not None
        assert refused.reason == "overloaded"
        task_group.cancel_scope.cancel()
    assert pool.uuids == ["big"]
    assert on_the_loop
    assert max(on_the_loop) < LARGE_PAYLOAD_CHARS
