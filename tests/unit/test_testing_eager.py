"""dispatcher.testing's eager mode: every submission runs at once, here, without a database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import NotConfiguredError, reset, setup
from dispatcher.publish import (
    DispatcherError,
    InvalidSubmission,
    abatch,
    asubmit_task,
    batch,
    interception,
    prepare_submission,
    submit_task,
)
from dispatcher.testing import InMemoryBoundTask, captured, eager
from support import testing_tasks as tasks
from support.testing_tasks import CALLS


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    tasks.forbid_database(monkeypatch, tmp_path)
    yield
    reset()


def test_delay_runs_the_task_before_returning_the_submission() -> None:
    with eager() as mode:
        submission = tasks.add.delay(2, 3)
        assert CALLS == [("add", (2, 3))]
    assert submission.channel == "orders"
    assert submission.message["args"] == [2, 3]
    run = mode.run_of(submission)
    assert (run.outcome, run.result, run.uuid) == ("ok", 5, submission.uuid)
    assert [record.uuid for record in mode.submitted] == [submission.uuid]


def test_every_sync_api_runs_the_task() -> None:
    with eager() as mode:
        tasks.add.apply_async(args=[1, 1], timeout=5, delay=60, on_duplicate="discard")
        submit_task("support.testing_tasks.add", args=[2, 2])
        submit_task(tasks.add, kwargs={"a": 3, "b": 3}, uuid="fixed-uuid")
        tasks.Report.delay("2026-11")
    assert [run.result for run in mode.runs] == [2, 4, 6, "2026-11"]
    first = mode.submitted[0]
    assert first.options == {"timeout": 5, "delay": 60, "on_duplicate": "discard"}
    assert mode.run_of("fixed-uuid").result == 6


def test_every_async_api_awaits_the_task_in_the_running_loop() -> None:
    async def main() -> list[Any]:
        with eager() as mode:
            await tasks.async_double.adelay(2)
            await tasks.async_double.aapply_async(args=[3])
            await asubmit_task("support.testing_tasks.async_double", args=[4])
            await tasks.add.adelay(1, 2)
            tasks.async_double.delay(5)  # sync call inside a running loop: runs aside
        return [run.result for run in mode.runs]

    assert asyncio.run(main()) == [4, 6, 8, 3, 10]


def test_a_coroutine_task_runs_from_sync_code() -> None:
    with eager() as mode:
        tasks.async_double.delay(21)
    assert mode.runs[0].result == 42


def test_batch_runs_its_tasks_when_the_block_ends() -> None:
    with eager() as mode, batch() as collected:
        tasks.add.delay(1, 2)
        submit_task(tasks.add, args=[3, 4])
        assert CALLS == []
        assert len(collected.submissions) == 2
    assert [run.result for run in mode.runs] == [3, 7]


def test_a_batch_that_raises_runs_nothing() -> None:
    def abandoned_batch() -> None:
        with batch():
            tasks.add.delay(1, 2)
            raise KeyError("abandon")

    with eager() as mode, pytest.raises(KeyError):
        abandoned_batch()
    assert mode.runs == []
    assert CALLS == []


def test_async_batch_runs_its_tasks_when_the_block_ends() -> None:
    async def main() -> list[Any]:
        with eager() as mode:
            async with abatch():
                await tasks.async_double.adelay(1)
                await tasks.add.adelay(1, 1)
                assert CALLS == []
        return [run.result for run in mode.runs]

    assert asyncio.run(main()) == [2, 2]


def test_a_connection_is_never_used_and_is_recorded() -> None:
    connection: Any = object()  # anything: it must not be touched
    with eager() as mode:
        tasks.add.apply_async(args=[1, 2], connection=connection)
        with batch(connection):
            tasks.add.delay(3, 4)
    assert [run.result for run in mode.runs] == [3, 7]
    assert [record.in_transaction for record in mode.submitted] == [True, True]


def test_durable_queues_run_too_with_their_options_recorded() -> None:
    setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {
                    "conninfo": "host=127.0.0.1 port=9 dbname=none",
                    "channels": ["orders"],
                },
                "pg_queue": {"queues": ["jobs"]},
            },
        }
    )
    with eager() as mode:
        submission = tasks.add.apply_async(args=[1, 2], queue="jobs", max_attempts=3)
        with pytest.raises(InvalidSubmission, match="max_attempts: applies to durable queues only"):
            tasks.add.apply_async(args=[1, 2], max_attempts=3)
    assert submission.channel == "jobs"
    assert mode.run_of(submission).result == 3
    assert mode.submitted[0].options == {"max_attempts": 3}
    assert len(mode.runs) == 1


def test_without_a_config_max_attempts_is_recorded_for_any_queue() -> None:
    """No config says which queues are durable: the task's own, as in production, is taken
    for one (a task declared @task(queue="payments", max_attempts=5) must be testable)."""
    with eager() as mode:
        submission = tasks.add.apply_async(args=[1, 2], queue="payments", max_attempts=5)
    assert mode.run_of(submission).result == 3
    assert mode.submitted[0].options == {"max_attempts": 5}


def test_bad_arguments_raise_what_publishing_raises_and_run_nothing() -> None:
    with pytest.raises(InvalidSubmission) as real:
        prepare_submission(tasks.add, args=[object(), 1])
    with eager() as mode, pytest.raises(InvalidSubmission) as testing:
        tasks.add.delay(object(), 1)
    assert str(testing.value) == str(real.value)
    assert "args[0]: a value of type object is not JSON-serialisable" in str(testing.value)
    with eager(), pytest.raises(InvalidSubmission, match="timeout"):
        tasks.add.apply_async(args=[1, 2], timeout=-1)
    assert mode.runs == []


def test_a_misspelt_name_is_reported_before_the_missing_default_channel(tmp_path: Path) -> None:
    # Several channels and no default: a name known here would need queue=... to be sent.
    (tmp_path / "dispatcher.yml").write_text(
        "version: 1\n"
        "brokers:\n"
        "  pg_notify:\n"
        "    conninfo: host=127.0.0.1 port=9\n"
        "    channels: [orders, emails]\n"
    )
    for mode in (eager(), captured()):
        with mode, pytest.raises(InvalidSubmission) as refused:
            submit_task("support.testing_tasks.no_queu", args=[1])
        assert "not a task registered in this process" in str(refused.value)
        assert "did you mean 'support.testing_tasks.no_queue'?" in str(refused.value)
    with captured(allow_unregistered=True), pytest.raises(InvalidSubmission) as refused:
        submit_task("support.testing_tasks.no_queu", args=[1])
    assert "no channel to send it on" in str(refused.value)


def test_unregistered_names_are_refused_with_a_suggestion() -> None:
    with eager() as mode, pytest.raises(InvalidSubmission) as refused:
        submit_task("support.testing_tasks.ad", args=[1, 2])
    assert "not a task registered in this process" in str(refused.value)
    assert "did you mean 'support.testing_tasks.add'?" in str(refused.value)

    def batch_with_an_unknown_task() -> None:
        with batch():
            tasks.add.delay(1, 2)
            submit_task("elsewhere.tasks.unknown")

    with eager(), pytest.raises(InvalidSubmission):
        batch_with_an_unknown_task()
    assert mode.runs == []
    assert CALLS == []


def test_an_error_raised_by_the_task_reaches_the_caller_and_is_recorded() -> None:
    with eager() as mode, pytest.raises(ValueError, match="broken"):
        tasks.fail.delay("broken")
    [run] = mode.runs
    assert run.outcome == "error"
    assert isinstance(run.error, ValueError)


def test_errors_can_be_recorded_instead_of_raised() -> None:
    with eager(propagate=False) as mode:
        submission = tasks.fail.delay("quietly")
        tasks.add.delay(1, 1)
    run = mode.run_of(submission)
    assert (run.outcome, str(run.error), run.ok) == ("error", "quietly", False)
    assert mode.runs[1].result == 2


def test_cancel_and_exit_end_the_task_without_raising() -> None:
    with eager() as mode:
        tasks.cancelled.delay()
        tasks.exits.delay()
    assert [run.outcome for run in mode.runs] == ["cancelled", "ok"]


def test_a_bound_task_gets_an_in_memory_object_whose_run_submits() -> None:
    with eager() as mode:
        submission = tasks.bound.delay("support.testing_tasks.add")
    run = mode.run_of(submission)
    assert isinstance(run.bound, InMemoryBoundTask)
    assert run.result == submission.uuid == run.bound.uuid
    assert run.bound.worker_id == 0
    assert run.bound.controls == [("run", {"task": "support.testing_tasks.add", "args": [1, 2]})]
    nested = mode.runs[0]
    assert (nested.task, nested.result) == ("support.testing_tasks.add", 3)
    reply = CALLS[-1][1]
    assert reply == {
        "ack": {"task": "support.testing_tasks.add", "args": [1, 2], "uuid": nested.uuid},
        "uuid": nested.uuid,
    }


def test_bound_control_replies() -> None:
    bound = InMemoryBoundTask("u-1")
    assert bound.control("running") == {}
    assert bound.control("alive") == {}
    assert "not simulated" in bound.control("workers")["error"]
    with eager():
        assert "task refused" in bound.control("run", {"task": "nowhere.nothing"})["error"]
    assert [command for command, _ in bound.controls] == ["running", "alive", "workers", "run"]


def test_bind_can_be_asked_per_submission() -> None:
    with eager() as mode:
        tasks.echo_types.apply_async(args=[1])
    assert mode.runs[0].bound is None
    with eager(), pytest.raises(InvalidSubmission, match="too many positional arguments"):
        tasks.echo_types.apply_async(args=[1], bind=True)  # takes no bound object


def test_arguments_arrive_as_a_worker_receives_them() -> None:
    with eager() as mode:
        tasks.echo_types.delay((1, 2))
        tasks.no_queue.delay({1: "one"})
    assert mode.runs[0].result == "list"
    assert mode.runs[1].result == {"1": "one"}


def test_errbacks_and_callbacks_run_as_in_a_worker() -> None:
    add = "support.testing_tasks.add"
    follow_ups = {
        "errbacks": [{"task": add, "args": [1, 0]}],
        "callbacks": [{"task": add, "args": [2, 0]}],
    }
    with eager(propagate=False) as mode:
        failed = tasks.fail.apply_async(args=["no"], extra=follow_ups)
        done = tasks.add.apply_async(args=[0, 0], extra=follow_ups)
    # A job ends with its follow-ups: they are listed before it.
    assert [(run.task, run.result, run.uuid) for run in mode.runs] == [
        (add, 1, failed.uuid),
        (add, 2, failed.uuid),
        ("support.testing_tasks.fail", None, failed.uuid),
        (add, 2, done.uuid),
        (add, 0, done.uuid),
    ]


def test_tasks_submitted_by_tasks_run_at_once() -> None:
    with eager() as mode:
        tasks.chain.delay(2)
    assert [run.result for run in mode.runs] == [0, 1, 2]  # the innermost ends first


def test_without_config_a_task_with_no_queue_uses_the_default_queue() -> None:
    with eager() as mode:
        assert tasks.no_queue.delay(1).channel == "default"
    with eager(default_queue="elsewhere"):
        assert tasks.no_queue.delay(1).channel == "elsewhere"
    with eager(default_queue=None), pytest.raises(NotConfiguredError):
        tasks.no_queue.delay(1)
    assert len(mode.runs) == 1


def test_with_a_config_its_default_channel_is_used() -> None:
    setup(
        {"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=none", "channels": ["main"]}}}
    )
    with eager():
        assert tasks.no_queue.delay(1).channel == "main"


def test_modes_nest_and_leave_nothing_installed() -> None:
    assert interception.current is None
    with eager() as outer:
        with eager() as inner:
            tasks.add.delay(1, 1)
        tasks.add.delay(2, 2)
    assert interception.current is None
    assert [run.result for run in inner.runs] == [2]
    assert [run.result for run in outer.runs] == [4]


def test_outside_the_block_publishing_is_real_again() -> None:
    with eager():
        pass
    with pytest.raises(DispatcherError):  # no config, no connection: nothing to send with
        tasks.add.delay(1, 2)
    assert CALLS == []


def test_importing_dispatcher_testing_loads_neither_pytest_nor_the_server() -> None:
    probe = (
        "import sys, dispatcher.testing\n"
        "print(sorted(m for m in ('pytest', 'anyio', 'dispatcher.server') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
