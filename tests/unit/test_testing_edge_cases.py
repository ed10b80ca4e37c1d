"""dispatcher.testing where it could part from the real path: mutated arguments, tasks that
submit themselves without end, a batch with a failing task."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.publish import AsyncioRequired, abatch, asubmit_task, batch
from dispatcher.testing import Eager, InMemoryBoundTask, captured, eager
from support import testing_edge_tasks as tasks
from support import testing_tasks


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    testing_tasks.forbid_database(monkeypatch, tmp_path)
    tasks.SEEN.clear()
    yield
    reset()


def test_a_captured_task_keeps_the_arguments_it_was_submitted_with() -> None:
    items = ["apple"]
    with captured() as record:
        tasks.keep.delay(items)
        items.append("pear")  # after the submission: not part of the message sent
    [sent] = record
    assert sent.args == [["apple"]]
    assert sent.message["args"] == [["apple"]]
    record.run()
    assert tasks.SEEN == [["apple", "changed by the task"]]
    assert record.tasks[0].args == [["apple"]]  # what the task did to its copy neither


def test_an_eager_batch_runs_its_tasks_with_the_arguments_as_submitted() -> None:
    items = ["apple"]
    with eager(), batch():
        tasks.keep.delay(items)
        items.append("pear")
    assert tasks.SEEN == [["apple", "changed by the task"]]
    assert items == ["apple", "pear"]  # the task got a copy


def test_a_signed_and_chunked_capture_is_decoded_as_sent() -> None:
    setup(
        {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": "host=127.0.0.1 port=9", "channels": ["orders"]}},
            "security": {"keys": [{"id": "k1", "secret": "s" * 32}]},
        }
    )
    big = ["x" * 100] * 200  # over NOTIFY's 8000 bytes: sent in chunks
    with captured() as record:
        tasks.keep.delay(big)
        big.append("later")
    [sent] = record
    assert len(sent.payloads) > 1
    assert "__dispatcher_signed__" in "".join(sent.payloads)
    assert sent.args == [["x" * 100] * 200]


def test_a_task_that_keeps_submitting_itself_is_stopped_with_a_clear_error() -> None:
    with eager() as mode, pytest.raises(RecursionError, match="does a task keep submitting"):
        tasks.resubmit_forever.delay(0)
    assert len(mode.runs) == 100


def test_a_coroutine_task_that_keeps_submitting_itself_is_stopped_too() -> None:
    """Its synchronous .delay() runs the next one in a thread: the bound follows it there."""
    threads = threading.active_count()
    with eager() as mode, pytest.raises(RecursionError, match="does a task keep submitting"):
        tasks.resubmit_forever_from_a_coroutine.delay(0)
    assert len(mode.runs) == 100
    assert threading.active_count() == threads


def test_without_propagation_the_innermost_run_records_the_error() -> None:
    with eager(propagate=False) as mode:
        tasks.resubmit_forever.delay(0)
    assert [run.outcome for run in mode.runs] == ["error"] + ["ok"] * 99
    assert isinstance(mode.runs[0].error, RecursionError)


def submit_a_batch(*tasks_and_args: tuple[Any, Any]) -> None:
    """Submit each task with its argument in one batch."""
    with batch():
        for task, argument in tasks_and_args:
            task.delay(argument)


def test_every_task_of_an_eager_batch_runs_though_one_raises() -> None:
    with eager() as mode, pytest.raises(ValueError, match="first"):
        submit_a_batch(
            (tasks.keep, 1), (tasks.explode, "first"), (tasks.explode, "second"), (tasks.keep, 2)
        )
    assert tasks.SEEN == [1, "first", "second", 2]
    assert [run.outcome for run in mode.runs] == ["ok", "error", "error", "ok"]


def test_every_task_of_an_async_eager_batch_runs_though_one_raises() -> None:
    async def main() -> None:
        async with abatch():
            await tasks.explode.adelay("first")
            await tasks.keep.adelay(2)

    with eager(), pytest.raises(ValueError, match="first"):
        asyncio.run(main())
    assert tasks.SEEN == ["first", 2]


def test_an_interrupt_stops_an_eager_batch_at_once() -> None:
    with eager(), pytest.raises(KeyboardInterrupt):
        submit_a_batch((tasks.keep, 1), (tasks.interrupt, None), (tasks.keep, 2))
    assert tasks.SEEN == [1]


def test_a_bound_run_with_keys_extra_refuses_still_runs_as_on_a_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    testing_tasks.forbid_database(monkeypatch, tmp_path)
    with eager() as mode:
        bound = InMemoryBoundTask("u-bound")
        reply = bound.control(
            "run", {"task": "support.testing_tasks.add", "args": [1, 2], "queue": "x"}
        )
    assert "error" not in reply
    assert mode.run_of(reply["uuid"]).result == 3


async def _adelay() -> None:
    await tasks.keep.adelay(1)


async def _asubmit_task() -> None:
    await asubmit_task("support.testing_edge_tasks.keep", args=[1])


async def _abatch() -> None:
    async with abatch():
        await tasks.keep.adelay(1)


@pytest.mark.parametrize("mode", [eager, captured])
@pytest.mark.parametrize(
    "submit", [_adelay, _asubmit_task, _abatch], ids=["adelay", "asubmit_task", "abatch"]
)
def test_the_async_api_under_trio_raises_asyncio_required_as_in_production(
    mode: Callable[[], Any], submit: Callable[[], Awaitable[None]]
) -> None:
    """Both modes took the submission under trio (eager even ran it), where a real send
    raises AsyncioRequired: an application's trio code passed its tests and failed on
    every submission once deployed."""
    trio = pytest.importorskip("trio")
    with mode() as record, pytest.raises(AsyncioRequired, match=r"trio\.to_thread\.run_sync"):
        trio.run(submit)
    assert (record.submitted if isinstance(record, Eager) else record.tasks) == []
    assert tasks.SEEN == []
