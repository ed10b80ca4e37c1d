"""dispatcher.testing's captured mode: submissions are recorded, and run when the test asks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import reset
from dispatcher.publish import InvalidSubmission, abatch, batch, submit_task
from dispatcher.schema import CHUNK_KEY, MAX_NOTIFY_PAYLOAD_BYTES
from dispatcher.testing import captured
from support import testing_tasks as tasks
from support.testing_tasks import CALLS


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    tasks.forbid_database(monkeypatch, tmp_path)
    yield
    reset()


def test_a_submission_is_recorded_as_it_would_be_sent_and_not_run() -> None:
    with captured() as recorded:
        submission = tasks.add.apply_async(args=[1, 2], timeout=5, on_duplicate="serial")
    assert CALLS == []
    [record] = recorded
    assert record.submission is submission
    assert (record.task, record.args, record.kwargs) == ("support.testing_tasks.add", [1, 2], {})
    assert (record.queue, record.uuid) == ("orders", submission.uuid)
    assert record.options == {"timeout": 5, "on_duplicate": "serial"}
    assert record.message == submission.message
    assert [json.loads(payload) for payload in record.payloads] == [dict(submission.message)]
    assert record.in_transaction is False
    assert recorded.pending == [record]


def test_a_large_message_is_recorded_in_its_chunks() -> None:
    with captured() as recorded:
        tasks.no_queue.delay("x" * MAX_NOTIFY_PAYLOAD_BYTES)
    [record] = recorded
    assert len(record.payloads) > 1
    assert all(CHUNK_KEY in json.loads(payload) for payload in record.payloads)
    assert recorded.run().result == "x" * MAX_NOTIFY_PAYLOAD_BYTES


def test_run_one_then_all() -> None:
    with captured() as recorded:
        first = tasks.add.delay(1, 1)
        tasks.add.delay(2, 2)
        third = tasks.Report.delay("q3")
        assert recorded.run().uuid == first.uuid  # the first pending one
        assert recorded.run(recorded.for_task(tasks.Report)[0]).result == "q3"
        assert [record.uuid for record in recorded.pending] == [recorded.tasks[1].uuid]
        assert [run.result for run in recorded.run_all()] == [4]
        assert recorded.pending == []
        with pytest.raises(LookupError, match="no captured task is pending"):
            recorded.run()
    assert [run.result for run in recorded.runs] == [2, "q3", 4]
    assert third.uuid in {run.uuid for run in recorded.runs}


def test_filter_by_task_name_or_function() -> None:
    with captured() as recorded:
        tasks.add.delay(1, 1)
        submit_task("support.testing_tasks.no_queue", args=["a"])
        tasks.add.delay(2, 2)
    assert [r.args for r in recorded.for_task(tasks.add)] == [[1, 1], [2, 2]]
    assert [r.args for r in recorded.for_task("support.testing_tasks.no_queue")] == [["a"]]
    assert recorded.for_task("support.testing_tasks.fail") == []

    def not_a_task() -> None: ...

    with pytest.raises(ValueError, match="not a registered task"):
        recorded.for_task(not_a_task)


def test_clear_forgets_everything() -> None:
    with captured() as recorded:
        tasks.add.delay(1, 1)
        recorded.run()
        tasks.add.delay(2, 2)
        recorded.clear()
    assert (len(recorded), recorded.pending, recorded.runs) == (0, [], [])


def test_run_all_runs_what_the_tasks_submit() -> None:
    with captured() as recorded:
        tasks.chain.delay(3)
        assert len(recorded) == 1
        runs = recorded.run_all()
    assert [run.result for run in runs] == [3, 2, 1, 0]
    assert len(recorded) == 4


def test_run_all_stops_tasks_that_never_stop_submitting() -> None:
    with captured() as recorded:
        tasks.chain.delay(50)
        with pytest.raises(RuntimeError, match="5 tasks ran and 1 are still pending"):
            recorded.run_all(max_runs=5)


def test_errors_propagate_from_run_or_are_recorded() -> None:
    with captured() as recorded:
        tasks.fail.delay("loud")
        with pytest.raises(ValueError, match="loud"):
            recorded.run()
    assert recorded.runs[0].outcome == "error"
    with captured(propagate=False) as recorded:
        tasks.fail.delay("quiet")
        tasks.add.delay(1, 1)
        runs = recorded.run_all()
    assert [run.outcome for run in runs] == ["error", "ok"]


def test_validation_and_unregistered_names_are_as_in_eager_mode() -> None:
    with captured() as recorded:
        with pytest.raises(InvalidSubmission, match="delay"):
            tasks.add.apply_async(args=[1, 2], delay=-5)
        with pytest.raises(InvalidSubmission, match=r"did you mean 'support\.testing_tasks\.add'"):
            submit_task("support.testing_tasks.adds")
    assert len(recorded) == 0


def test_unregistered_names_may_be_recorded_but_not_run() -> None:
    with captured(allow_unregistered=True) as recorded:
        submit_task("billing.tasks.charge", args=[10], queue="billing")
        [record] = recorded.for_task("billing.tasks.charge")
        assert (record.queue, record.args) == ("billing", [10])
        with pytest.raises(LookupError, match=r"'billing\.tasks\.charge' is not registered"):
            recorded.run()


def test_batches_and_connections_are_recorded() -> None:
    connection: Any = object()
    with captured() as recorded:
        with batch(connection):
            tasks.add.delay(1, 1)
            assert len(recorded) == 0
        tasks.add.apply_async(args=[2, 2])
    assert [record.in_transaction for record in recorded] == [True, False]


def test_asyncio_code_records_and_runs() -> None:
    async def main() -> list[Any]:
        with captured() as recorded:
            async with abatch():
                await tasks.async_double.adelay(4)
            await tasks.add.aapply_async(args=[1, 1])
            assert CALLS == []
            return [run.result for run in await recorded.arun_all()]

    assert asyncio.run(main()) == [8, 2]
