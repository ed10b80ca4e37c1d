"""The intake under hostile input: depth, numbers, chunk caps and its own bugs."""

from __future__ import annotations

import json
import logging

import pytest

from dispatcher.config import Limits
from dispatcher.publish import split_message
from dispatcher.schema import MAX_NESTING_DEPTH
from dispatcher.server.intake import Intake
from dispatcher.server.jobs import Job
from dispatcher.server.stats import ServiceStats


class RecordingPool:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> None:
        self.jobs.append(job)


class BrokenPool:
    def submit(self, job: Job) -> None:
        raise RuntimeError(f"bug while queueing {job.uuid}\nsecond line")


def make_intake(pool: object, stats: ServiceStats, limits: Limits | None = None) -> Intake:
    intake = Intake(pool, stats, chunk_expiry=60, limits=limits)  # type: ignore[arg-type]
    intake.catalogue.learn(frozenset({"app.tasks.work"}))
    return intake


@pytest.fixture
def pool() -> RecordingPool:
    return RecordingPool()


@pytest.fixture
def stats() -> ServiceStats:
    return ServiceStats()


def test_too_deep_payload_has_its_own_reason(
    pool: RecordingPool, stats: ServiceStats, caplog: pytest.LogCaptureFixture
) -> None:
    intake = make_intake(pool, stats)
    with caplog.at_level(logging.WARNING, logger="dispatcher.intake"):
        intake.receive('{"task": "app.tasks.work", "args": ' + "[" * 2000 + "]" * 2000 + "}", "c")
    assert stats.rejected == {"too_deep": 1}
    [record] = caplog.records
    assert record.exc_info is None
    assert f"nested more than {MAX_NESTING_DEPTH} levels deep" in record.getMessage()
    assert pool.jobs == []


def test_args_nested_just_under_the_limit_run(pool: RecordingPool, stats: ServiceStats) -> None:
    args = "[" * (MAX_NESTING_DEPTH - 1) + "]" * (MAX_NESTING_DEPTH - 1)
    make_intake(pool, stats).receive('{"task": "app.tasks.work", "args": ' + args + "}", "c")
    assert stats.rejected == {}
    assert len(pool.jobs) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("time_pub", "9" * 400), ("time_pub", "-1"), ("timeout", "1e300"), ("delay", "9" * 30)],
)
def test_numbers_out_of_bounds_are_invalid_messages(
    pool: RecordingPool, stats: ServiceStats, field: str, value: str
) -> None:
    make_intake(pool, stats).receive(f'{{"task": "app.tasks.work", "{field}": {value}}}', "c")
    assert stats.rejected == {"invalid_message": 1}


def test_overflowing_number_is_not_json(pool: RecordingPool, stats: ServiceStats) -> None:
    make_intake(pool, stats).receive('{"task": "app.tasks.work", "time_pub": 1e400}', "c")
    assert stats.rejected == {"not_json": 1}


def test_chunk_envelope_with_integral_float_total_and_index_works(
    pool: RecordingPool, stats: ServiceStats
) -> None:
    message = '{"task": "app.tasks.work", "uuid": "f"}'
    envelope = {
        "__dispatcherd_chunk__": "v1",
        "message_id": "m",
        "index": 0.0,
        "total": 1.0,
        "payload": message,
    }
    make_intake(pool, stats).receive(json.dumps(envelope), "c")
    assert stats.rejected == {}
    assert [job.uuid for job in pool.jobs] == ["f"]


def test_partial_chunks_beyond_the_limits_evict_the_oldest(
    pool: RecordingPool, stats: ServiceStats, caplog: pytest.LogCaptureFixture
) -> None:
    intake = make_intake(pool, stats, Limits(max_partial_messages=2))
    messages = [
        split_message(json.dumps({"task": "app.tasks.work", "uuid": f"u{n}", "args": ["x" * 9000]}))
        for n in range(3)
    ]
    with caplog.at_level(logging.WARNING, logger="dispatcher.intake"):
        for envelopes in messages:
            intake.receive(envelopes[0], "c")
    assert stats.rejected == {"chunk_evicted": 1}
    assert "evicted to make room" in caplog.records[-1].getMessage()
    for envelopes in messages:  # the first message lost its start: only the others complete
        intake.receive(envelopes[1], "c")
    assert [job.uuid for job in pool.jobs] == ["u1", "u2"]
    assert len(intake.chunks) == 0


def test_partial_chunk_memory_cap_comes_from_the_limits(stats: ServiceStats) -> None:
    intake = make_intake(RecordingPool(), stats, Limits(max_partial_bytes=50_000))
    assert (intake.chunks.max_memory, intake.chunks.max_messages) == (50_000, 1000)
    for n in range(20):
        text = json.dumps({"task": "app.tasks.work", "args": ["y" * 20_000]})
        intake.receive(split_message(text, message_id=f"m{n}")[0], "c")
    assert intake.chunks.memory <= 50_000
    assert stats.rejected["chunk_evicted"] >= 14


def test_internal_errors_cost_one_message_and_one_rate_limited_line(
    stats: ServiceStats, caplog: pytest.LogCaptureFixture
) -> None:
    intake = make_intake(BrokenPool(), stats)
    with caplog.at_level(logging.ERROR, logger="dispatcher.intake"):
        for n in range(100):
            intake.receive(f'{{"task": "app.tasks.work", "uuid": "u{n}"}}', "chan")
    assert stats.rejected == {"internal_error": 100}
    records = caplog.records
    assert 1 <= len(records) <= 20
    first = records[0].getMessage()
    assert first.startswith(
        "internal error in intake: RuntimeError: bug while queueing u0\\nsecond line"
    )
    assert "Traceback" in first
    assert all("Traceback" not in record.getMessage() for record in records[1:])
