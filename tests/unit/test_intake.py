"""The intake's decisions, payload by payload (no database, no worker processes)."""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import Limits
from dispatcher.publish import split_message
from dispatcher.server.intake import Intake
from dispatcher.server.intake_jobs import _with_uuid
from dispatcher.server.jobs import Job
from dispatcher.server.stats import ServiceStats
from support.examples import examples


class RecordingPool:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> None:
        self.jobs.append(job)


@pytest.fixture
def pool() -> RecordingPool:
    return RecordingPool()


@pytest.fixture
def stats() -> ServiceStats:
    return ServiceStats()


@pytest.fixture
def intake(pool: RecordingPool, stats: ServiceStats) -> Intake:
    intake = Intake(pool, stats, chunk_expiry=60)  # type: ignore[arg-type]
    intake.catalogue.learn(frozenset({"app.tasks.work"}))
    return intake


def sent_message(job: Job) -> dict[str, Any]:
    request = json.loads(job.line)
    assert request["op"] == "run"
    return request["message"]  # type: ignore[no-any-return]


def test_valid_message_becomes_a_job_with_its_text_passed_through(
    intake: Intake, pool: RecordingPool, stats: ServiceStats
) -> None:
    payload = '{\n  "task": "app.tasks.work",\n  "uuid": "u1",\n  "args": ["a\\nb"]\n}'
    intake.receive(payload, "c1")
    [job] = pool.jobs
    assert (job.uuid, job.task) == ("u1", "app.tasks.work")
    assert job.line.count(b"\n") == 1  # one line, whatever the payload's layout
    assert json.loads(job.line)["channel"] == "c1"
    assert sent_message(job) == {"task": "app.tasks.work", "uuid": "u1", "args": ["a\nb"]}
    assert stats.received == 1


def test_message_without_uuid_gets_a_random_one(intake: Intake, pool: RecordingPool) -> None:
    # A counted uuid (internal-1) repeats across restarts and services: a cancel by it
    # would reach every service's job of that number.
    intake.receive('{"task": "app.tasks.work"}', "c")
    intake.receive('{"task": "app.tasks.work"}', "c")
    uuids = [sent_message(job)["uuid"] for job in pool.jobs]
    assert [UUID(uuid).version for uuid in uuids] == [4, 4]
    assert uuids[0] != uuids[1]


def test_a_message_without_uuid_keeps_its_text_with_the_uuid_added(
    intake: Intake, pool: RecordingPool
) -> None:
    payload = ' \t{ "task": "app.tasks.work", "args": [1.10, "\\u00e9é", {"k": []}] }'
    intake.receive(payload, "c")
    [job] = pool.jobs
    assert UUID(job.uuid).version == 4
    assert sent_message(job) == {
        "uuid": job.uuid,
        "task": "app.tasks.work",
        "args": [1.1, "éé", {"k": []}],
    }
    # Passed through, not encoded again: the number and the escapes are as they were sent.
    assert '"args": [1.10, "\\u00e9é", {"k": []}] }'.encode() in job.line


@settings(max_examples=examples(200), deadline=None)
@given(
    extra=st.dictionaries(
        st.text(max_size=5).filter(lambda key: key not in ("task", "uuid")),
        st.recursive(st.none() | st.integers() | st.text(max_size=5), st.lists, max_leaves=5),
        max_size=4,
    ),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_the_uuid_added_to_any_message_text_leaves_valid_json(
    extra: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    message = {**extra, "task": "app.tasks.work"}
    text = json.dumps(message, indent=indent, ensure_ascii=ascii_only)
    assert json.loads(_with_uuid(text, "internal-7")) == {**message, "uuid": "internal-7"}


@pytest.mark.parametrize(
    ("payload", "reason", "text"),
    [
        ("not json", "not_json", "not JSON"),
        ('{"task": "app.tasks.work", "timeout": NaN}', "not_json", "NaN is not valid JSON"),
        ("[1, 2]", "not_object", "a JSON array, not an object"),
        ('"text"', "not_object", "a JSON string, not an object"),
        ("null", "not_object", "a JSON null, not an object"),
        (
            '{"task": "os.system", "uuid": "u9"}',
            "unknown_task",
            "(uuid u9): task 'os.system' is not registered",
        ),
        (
            '{"task": "app.tasks.work", "delay": -1}',
            "invalid_message",
            "delay: must be at least 0, got -1",
        ),
        (
            '{"control": "alive"}',
            "control_unsupported",
            "control messages over a broker are not supported",
        ),
        ('{"__dispatcherd_chunk__": "v2"}', "invalid_chunk", "invalid chunk envelope"),
        # Refused before the schema, yet with the uuid when the text gives it back.
        (
            '{"task": "a.b", "uuid": "u\\n1", "args": [NaN]}',
            "not_json",
            "on channel chan (uuid u\\n1): not JSON (NaN is not valid JSON)",
        ),
        (
            '{"task": "a.b", "uuid": "u2", "args": [' + "1" * 400 + ".5]}",
            "not_json",
            "(uuid u2): not JSON (number 1111111111",
        ),
        (
            '{"task": "a.b", "uuid": "u3", "args": ' + "[" * 64 + "]" * 64 + "}",
            "too_deep",
            "(uuid u3): arrays and objects nested more than 64 levels deep",
        ),
        ('{"uuid": ["u4"], "args": [NaN]}', "not_json", "on channel chan: not JSON (NaN"),
        (
            '{"task": "a.b", "uuid": "u5", "args": [1, {"k": -' + "9" * 5001 + "}]}",
            "not_json",
            "on channel chan (uuid u5): not JSON (args[1].k: the integer has more than 4300 digits)",
        ),
    ],
)
def test_rejections(
    intake: Intake,
    pool: RecordingPool,
    stats: ServiceStats,
    caplog: pytest.LogCaptureFixture,
    payload: str,
    reason: str,
    text: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher.intake"):
        intake.receive(payload, "chan")
    assert pool.jobs == []
    assert stats.rejected == {reason: 1}
    [record] = caplog.records
    assert record.getMessage().startswith("rejected message on channel chan")
    assert text in record.getMessage()


@pytest.mark.parametrize(
    ("task", "suggestion"),
    [
        ("myapp.tasks.nope", ""),  # the module alone is no likeness
        ("myapp.tasks.send_confirmaton", " (did you mean 'myapp.tasks.send_confirmation'?)"),
        ("myap.tasks.slow", " (did you mean 'myapp.tasks.slow'?)"),
        ("myapp.mails.slow", ""),
        (  # the publisher's script defined it: no service can import that module
            "__main__.slow",
            " (it was defined in the script that sent it, run as __main__, which no service "
            "imports: define it in a module of tasks.modules and import it from there)",
        ),
    ],
)
def test_an_unknown_task_is_suggested_a_name_only_when_it_looks_like_a_typo(
    pool: RecordingPool,
    stats: ServiceStats,
    caplog: pytest.LogCaptureFixture,
    task: str,
    suggestion: str,
) -> None:
    intake = Intake(pool, stats, chunk_expiry=60)  # type: ignore[arg-type]
    intake.catalogue.learn(frozenset({"myapp.tasks.slow", "myapp.tasks.send_confirmation"}))
    with caplog.at_level(logging.WARNING, logger="dispatcher.intake"):
        intake.receive(json.dumps({"task": task, "uuid": "u1"}), "chan")
    [record] = caplog.records
    assert record.getMessage().endswith(f"task {task!r} is not registered{suggestion}")


def test_chunks_out_of_order_are_joined(intake: Intake, pool: RecordingPool) -> None:
    text = json.dumps({"task": "app.tasks.work", "uuid": "big", "args": ["x" * 20_000]})
    envelopes = split_message(text)
    for envelope in reversed(envelopes):
        intake.receive(envelope, "c")
    [job] = pool.jobs
    assert sent_message(job)["args"] == ["x" * 20_000]


def test_oversized_chunked_message_is_dropped(pool: RecordingPool, stats: ServiceStats) -> None:
    intake = Intake(pool, stats, chunk_expiry=60)  # type: ignore[arg-type]
    intake.chunks.max_bytes = 10_000
    for envelope in split_message(json.dumps({"task": "app.tasks.work", "args": ["y" * 30_000]})):
        intake.receive(envelope, "c")
    assert stats.rejected["oversized"] == 1
    assert pool.jobs == []


def test_messages_wait_until_the_tasks_are_known(pool: RecordingPool, stats: ServiceStats) -> None:
    intake = Intake(pool, stats, chunk_expiry=60)  # type: ignore[arg-type]
    intake.receive('{"task": "app.tasks.work", "uuid": "early"}', "c")
    intake.receive('{"task": "app.tasks.other", "uuid": "unknown"}', "c")
    assert pool.jobs == []
    intake.catalogue.learn(frozenset({"app.tasks.work"}))
    assert [job.uuid for job in pool.jobs] == ["early"]
    assert stats.rejected == {"unknown_task": 1}


def test_messages_waiting_for_the_tasks_are_held_within_max_held_bytes(
    pool: RecordingPool, stats: ServiceStats, caplog: pytest.LogCaptureFixture
) -> None:
    def payload(uuid: str) -> str:
        return json.dumps({"task": "app.tasks.work", "uuid": uuid, "args": ["x" * 1000]})

    limit = 2 * len(payload("u-1")) + 10  # two held, not three
    limits = Limits(max_held_bytes=limit)
    intake = Intake(pool, stats, chunk_expiry=60, limits=limits)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="dispatcher.intake"):
        for uuid in ("u-1", "u-2", "u-3"):
            intake.receive(payload(uuid), "c")
    assert intake.waiting == 2
    assert stats.rejected == {"overloaded": 1}
    [record] = caplog.records
    line = record.getMessage()
    assert "(uuid u-3)" in line
    assert f"service.limits.max_held_bytes ({limit}) reached while workers start" in line
    intake.catalogue.learn(frozenset({"app.tasks.work"}))
    assert [job.uuid for job in pool.jobs] == ["u-1", "u-2"]
    assert intake.waiting == 0


def test_rejection_lines_are_rate_limited(
    intake: Intake, stats: ServiceStats, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher.intake"):
        for _ in range(1000):
            intake.receive("garbage!", "c")
    assert stats.rejected["not_json"] == 1000
    assert len(caplog.records) <= 20
