"""The event loops of a worker's tasks: the worker's own, kept from task to task, and theirs.

A task's end, cancel or ``SystemExit`` is reported at once whatever threads its
``to_thread()`` left running, the worker's loop outlives a cancel (a loop-bound global goes
on working), a plain task sees the thread's event loop as on a fresh worker, an async
generator a task dropped is closed within it, trio cancelled cleans up within its task, and
a traceback through ``gather()`` shows only the task's frames. Each test runs one worker
process (``worker_main``, without a service).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.server.worker_frames import RUNNER_MODULES
from support.service import wait_until
from support.worker_process import WorkerProcess

TASKS = "support.loop_tasks."

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(tmp_path / "worker.log", "support.loop_tasks") as started:
        yield started


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _cancel_once(worker: WorkerProcess, record: Path, uuid: str) -> dict[str, object]:
    """Cancel the task just sent once it says it started (SIGUSR1); return its ``done``."""
    wait_until(lambda: "started" in _lines(record), timeout=10)
    os.kill(worker.process.pid, signal.SIGUSR1)
    done = worker.event(timeout=5)
    assert done["uuid"] == uuid, done
    return done


@pytest.mark.parametrize("how", ["SystemExit", "KeyboardInterrupt"])
def test_an_async_task_exiting_while_its_thread_runs_ends_at_once(
    worker: WorkerProcess, tmp_path: Path, how: str
) -> None:
    """Its worker waited for the thread (to_thread) to end, however long, before reporting."""
    record = tmp_path / "record"
    done = worker.run(
        TASKS + "exits_with_a_thread_running", str(record), 30, how, uuid="u-exit", timeout=5
    )
    assert done["outcome"] == "error", done
    assert done["error"].startswith(how), done
    assert worker.run(TASKS + "waits_on_a_global_queue", uuid="u-next")["outcome"] == "ok"


def test_a_cancelled_async_task_awaiting_a_thread_ends_at_once_and_keeps_its_worker(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    """Its worker waited for the thread to end: the service killed it after cancel_grace."""
    record = tmp_path / "record"
    worker.send(TASKS + "awaits_a_thread", str(record), 30, uuid="u-thread")
    done = _cancel_once(worker, record, "u-thread")
    assert done["outcome"] == "cancelled", done
    assert _lines(record) == ["started", "finally"]
    after = worker.run(TASKS + "awaits_a_thread", str(tmp_path / "after"), 0, uuid="u-after")
    assert after["outcome"] == "ok", after


@pytest.mark.parametrize("between", ["cancel", "SystemExit"])
def test_the_workers_event_loop_outlives_a_cancel_or_an_exit(
    worker: WorkerProcess, tmp_path: Path, between: str
) -> None:
    """A global asyncio.Queue failed, bound to a different event loop, after an unrelated
    task of the worker was cancelled (or timed out, or raised SystemExit)."""
    assert worker.run(TASKS + "waits_on_a_global_queue", uuid="u-first")["outcome"] == "ok"
    record = tmp_path / "record"
    if between == "cancel":
        worker.send(TASKS + "sleeps_async", str(record), 30, uuid="u-between")
        assert _cancel_once(worker, record, "u-between")["outcome"] == "cancelled"
    else:
        done = worker.run(
            TASKS + "exits_with_a_thread_running", str(record), 0, between, uuid="u-between"
        )
        assert done["outcome"] == "error", done
    after = worker.run(TASKS + "waits_on_a_global_queue", uuid="u-after")
    assert after["outcome"] == "ok", after


@pytest.mark.parametrize("before", ["runs_asyncio_run", "waits_on_a_global_queue"])
def test_a_plain_task_sees_the_threads_event_loop_as_on_a_fresh_worker(
    worker: WorkerProcess, before: str
) -> None:
    """After asyncio.run() in a task, get_event_loop() failed in every later plain task of
    the worker ("There is no current event loop"); after an async task it gave the worker's
    own loop, with what earlier tasks had left on it."""
    fresh = worker.run(TASKS + "runs_on_get_event_loop", uuid="u-fresh", keep_result=True)
    assert fresh.get("result") == "42", fresh
    assert worker.run(TASKS + before, uuid="u-before")["outcome"] == "ok"
    for uuid in ("u-after", "u-again"):
        after = worker.run(TASKS + "runs_on_get_event_loop", uuid=uuid, keep_result=True)
        assert after.get("result") == "42", after
    assert worker.run(TASKS + "runs_asyncio_run", uuid="u-run")["outcome"] == "ok"


@pytest.mark.parametrize("how", ["runs_trio", "runs_trio_async"])
def test_trio_cancelled_in_a_task_cleans_up_within_it(
    worker: WorkerProcess, tmp_path: Path, how: str
) -> None:
    """Its finally ran at a garbage collection during a later task, whose output then
    held dozens of lines of trio's tracebacks ("Exception ignored ...")."""
    pytest.importorskip("trio")
    record = tmp_path / "record"
    worker.send(TASKS + how, str(record), uuid="u-trio")
    assert _cancel_once(worker, record, "u-trio")["outcome"] == "cancelled"
    assert _lines(record) == ["started", "trio finally"]
    for task in ("collects_garbage", "collects_garbage_async"):
        assert worker.run(TASKS + task, uuid="u-" + task)["outcome"] == "ok"
    worker.run(TASKS + "runs_asyncio_run", uuid="u-flush")
    log = worker.log
    assert "collects_garbage" not in log, log  # no output: nothing of trio's ran in them
    assert _lines(record) == ["started", "trio finally"]


def test_a_failure_through_gather_shows_no_frame_of_the_worker(worker: WorkerProcess) -> None:
    done = worker.run(TASKS + "fails_in_gather", uuid="u-gather")
    assert done["outcome"] == "error", done
    for name in RUNNER_MODULES:
        assert f"/{name}.py" not in done["traceback"], done["traceback"]
    assert (
        'in fails_in_gather\n    await asyncio.gather(fails(1), fails(2))\n  File "'
        in (done["traceback"])
    )


def test_a_keyboard_interrupt_through_gather_blames_the_task_for_its_leftovers_only(
    worker: WorkerProcess,
) -> None:
    """The worker's own asyncio.sleep(0), interrupted too, was listed as the task's leftover."""
    done = worker.run(TASKS + "interrupted_in_gather", uuid="u-kbi")
    assert done["outcome"] == "error", done
    log = worker.wait_for_log("left asyncio tasks pending")
    [warning] = [line for line in log.splitlines() if "left asyncio tasks pending" in line]
    assert warning.count("(asyncio task ") == 1, warning


def test_a_keyboard_interrupt_through_gather_shows_no_frame_of_the_worker_or_its_loop(
    worker: WorkerProcess,
) -> None:
    """Between the task's frames: worker_runner.py's _call, worker_loop.py's run, asyncio's loop."""
    done = worker.run(TASKS + "interrupted_in_gather", uuid="u-kbi")
    shown = done["traceback"]
    for frame in (*(f"/{name}.py" for name in RUNNER_MODULES), "base_events.py", "events.py"):
        assert frame not in shown, shown
    assert "await asyncio.gather(interrupts(), asyncio.sleep(0.2))\n" in shown, shown
    assert shown.endswith("    raise KeyboardInterrupt\nKeyboardInterrupt\n"), shown


def test_an_async_generator_a_task_dropped_is_closed_within_it(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    """Its finally ran during the next async task, cut at its first await, unsaid."""
    record = tmp_path / "record"
    done = worker.run(TASKS + "drops_an_async_generator", str(record), uuid="u-agen")
    assert done["outcome"] == "ok", done
    assert _lines(record) == ["returned", "finally starts", "finally ends"]


def test_an_async_generator_a_task_kept_is_closed_when_its_worker_stops(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    """Its finally never ran: the worker ended without closing its event loop's generators."""
    record = tmp_path / "record"
    done = worker.run(TASKS + "keeps_an_async_generator", str(record), uuid="u-kept")
    assert done["outcome"] == "ok", done
    worker.close()
    assert _lines(record) == ["kept", "finally"], worker.log


def test_the_settings_a_task_changed_on_the_workers_loop_are_put_back(
    worker: WorkerProcess,
) -> None:
    """A task factory that raised failed every later ``async def`` task of the worker; its
    debug mode had every callback logged as slow."""
    before = worker.run(TASKS + "the_loop_as_it_is", uuid="u-before", keep_result=True)
    assert worker.run(TASKS + "changes_the_loop", uuid="u-change")["outcome"] == "ok"
    after = worker.run(TASKS + "the_loop_as_it_is", uuid="u-after", keep_result=True)
    assert after["outcome"] == "ok", after
    assert after["result"] == before["result"] == "[false,null,0.1]"
    log = worker.wait_for_log(f"task {TASKS}changes_the_loop (uuid u-change) changed")
    assert (
        "changed the event loop of async def tasks (its task factory, exception handler, debug "
        "mode, slow_callback_duration): put back as they were, for the tasks that follow (said "
        "once per worker)" in log
    ), log
