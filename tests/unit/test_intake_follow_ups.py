"""The intake and dispatcherd's conventions: bare task names, ``callbacks`` and ``errbacks``."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from dispatcher.config import Security
from dispatcher.server.intake import Intake
from dispatcher.server.jobs import Job
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.stats import ServiceStats

WORK = "app.tasks.work"
AFTER = "app.tasks.after"


class RecordingPool:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> bool:
        self.jobs.append(job)
        return True


@pytest.fixture
def pool() -> RecordingPool:
    return RecordingPool()


@pytest.fixture
def stats() -> ServiceStats:
    return ServiceStats()


@pytest.fixture
def intake(pool: RecordingPool, stats: ServiceStats) -> Intake:
    intake = Intake(pool, stats, chunk_expiry=60)
    intake.catalogue.learn(frozenset({WORK, AFTER, "single"}))
    return intake


def sent_message(job: Job) -> dict[str, Any]:
    request = json.loads(job.line)
    assert request["op"] == "run"
    return request["message"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", [WORK, "single"])
def test_a_bare_registered_name_runs_as_a_task_message(
    intake: Intake, pool: RecordingPool, stats: ServiceStats, name: str
) -> None:
    intake.receive(name, "c")
    [job] = pool.jobs
    assert job.task == name
    assert sent_message(job) == {"uuid": job.uuid, "task": name}
    assert json.loads(job.line)["channel"] == "c"
    assert stats.received == 1
    assert stats.rejected == {}


@pytest.mark.parametrize(
    ("payload", "reason", "text"),
    [
        ("app.tasks.other", "unknown_task", "task 'app.tasks.other' is not registered"),
        ("lambda: 1", "not_json", "not JSON"),
        ('lambda: "x"', "not_json", "not JSON"),
        ("app.tasks.work()", "not_json", "not JSON"),
        (" app.tasks.work", "not_json", "not JSON"),
        ("app..work", "not_json", "not JSON"),
        ("app.tasks." + "x" * 300, "not_json", "not JSON"),
        ("", "not_json", "not JSON"),
    ],
)
def test_other_text_is_still_refused(
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
    assert text in record.getMessage()


def test_a_bare_name_waits_for_the_registered_names_like_any_message(
    pool: RecordingPool, stats: ServiceStats
) -> None:
    intake = Intake(pool, stats, chunk_expiry=60)
    intake.receive(WORK, "c")
    assert pool.jobs == []
    intake.catalogue.learn(frozenset({WORK}))
    assert [job.task for job in pool.jobs] == [WORK]


def test_a_bare_name_is_unsigned_where_signatures_are_required(
    pool: RecordingPool, stats: ServiceStats
) -> None:
    security = Security(keys=(), require_signed=frozenset({"task"}))
    intake = Intake(pool, stats, chunk_expiry=60, signatures=SignatureCheck(security))
    intake.catalogue.learn(frozenset({WORK}))
    intake.receive(WORK, "c")
    assert pool.jobs == []
    assert stats.rejected == {"unsigned": 1}


def test_callbacks_and_errbacks_go_to_the_worker_untouched(
    intake: Intake, pool: RecordingPool
) -> None:
    message = {
        "task": WORK,
        "uuid": "u1",
        "callbacks": [{"task": AFTER, "args": [1], "errbacks": [{"task": WORK}]}],
        "errbacks": [{"task": AFTER, "kwargs": {"k": 2}, "bind": True}],
    }
    intake.receive(json.dumps(message), "c")
    [job] = pool.jobs
    assert sent_message(job) == message


@pytest.mark.parametrize(
    ("follow_ups", "where"),
    [
        ({"callbacks": [{"task": AFTER}, {"task": "app.tasks.nope"}]}, "callbacks[1]"),
        ({"errbacks": [{"task": "app.tasks.nope"}]}, "errbacks[0]"),
        (
            {"callbacks": [{"task": AFTER, "errbacks": [{"task": "app.tasks.nope"}]}]},
            "callbacks[0].errbacks[0]",
        ),
    ],
)
def test_a_follow_up_that_is_not_registered_refuses_the_message(
    intake: Intake,
    pool: RecordingPool,
    stats: ServiceStats,
    caplog: pytest.LogCaptureFixture,
    follow_ups: dict[str, Any],
    where: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher.intake"):
        intake.receive(json.dumps({"task": WORK, "uuid": "u2", **follow_ups}), "c")
    assert pool.jobs == []
    assert stats.rejected == {"unknown_task": 1}
    [record] = caplog.records
    assert f"(uuid u2): {where}: task 'app.tasks.nope' is not registered" in record.getMessage()


@pytest.mark.parametrize(
    "follow_ups",
    [
        {"callbacks": [{"args": []}]},
        {"callbacks": ["app.tasks.after"]},
        {"errbacks": {"task": AFTER}},
        {"callbacks": [{"task": "lambda: 1"}]},
        {"callbacks": [{"task": AFTER, "bind": "yes"}]},
    ],
)
def test_a_malformed_follow_up_is_an_invalid_message(
    intake: Intake, pool: RecordingPool, stats: ServiceStats, follow_ups: dict[str, Any]
) -> None:
    intake.receive(json.dumps({"task": WORK, **follow_ups}), "c")
    assert pool.jobs == []
    assert stats.rejected == {"invalid_message": 1}


def test_null_follow_ups_are_none(intake: Intake, pool: RecordingPool) -> None:
    intake.receive(json.dumps({"task": WORK, "callbacks": None, "errbacks": []}), "c")
    assert len(pool.jobs) == 1
