"""What a task leaves changed in its worker process never reaches the tasks that follow.

Logging configured anew, standard streams closed, asyncio tasks left pending or the event
loop closed, signal handlers, masks and alarms, the working directory and the umask, a forked child returning into the worker,
an exception whose ``__str__`` raises ``SystemExit``, context variables. Each test runs one worker process
(``worker_main``, without a service) and drives it over its socket.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.server.protocol import CANCEL_SIGNALS
from support.service import wait_until
from support.worker_process import WorkerProcess

LEAKY = "support.leaky_tasks."

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(tmp_path / "worker.log", "support.leaky_tasks") as started:
        yield started


@pytest.mark.parametrize("how", ["dict_config", "bare_dict_config", "basic_config", "disable"])
def test_a_task_configuring_logging_leaves_the_workers_own_log_alone(
    worker: WorkerProcess, how: str
) -> None:
    """Django's LOGGING (``disable_existing_loggers``) or ``basicConfig(force=True)`` in a
    task silenced the captured output of every later task, and the worker's warnings."""
    assert worker.run(LEAKY + "configures_logging", how, uuid="u-config")["outcome"] == "ok"
    assert worker.run(LEAKY + "says", "after", uuid="u-after")["outcome"] == "ok"
    assert worker.run(LEAKY + "closes_streams", uuid="u-close")["outcome"] == "ok"
    worker.wait_for_log(f"task output [{LEAKY}says u-after] printed after")
    worker.wait_for_log(f"task {LEAKY}closes_streams (uuid u-close) closed or replaced")


def test_a_task_patching_os_functions_leaves_the_workers_log_working(
    worker: WorkerProcess,
) -> None:
    """The worker's log thread wrote with ``os.write``, looked up at each write: patched, every
    later line of the worker was dropped without a word."""
    assert worker.run(LEAKY + "patches_os", uuid="u-patch")["outcome"] == "ok"
    assert worker.run(LEAKY + "says", "after", uuid="u-after")["outcome"] == "ok"
    log = worker.wait_for_log(f"task output [{LEAKY}says u-after] printed after")
    assert "leaky: logged after" in log


def test_a_task_closing_sys_stdout_and_stderr_has_them_put_back(worker: WorkerProcess) -> None:
    assert worker.run(LEAKY + "closes_streams", uuid="u-close")["outcome"] == "ok"
    after = worker.run(LEAKY + "says", "after", uuid="u-after")
    assert after["outcome"] == "ok", after
    log = worker.wait_for_log(f"task output [{LEAKY}says u-after] printed after")
    assert (
        f"task {LEAKY}closes_streams (uuid u-close) closed or replaced the worker's sys.stdout, "
        "sys.stderr: put back as they were" in log
    )


def test_asyncio_tasks_an_async_task_leaves_pending_are_cancelled_when_it_ends(
    worker: WorkerProcess,
) -> None:
    """As ``asyncio.run()`` does; one that refuses its cancel has its event loop closed."""
    for what in ("ticks", "exits", "stubborn"):
        left = worker.run(LEAKY + "leaves_a_task_pending", what, uuid=f"u-{what}")
        assert left["outcome"] == "ok", left
    innocent = worker.run(LEAKY + "awaits", 0.2, uuid="u-innocent")
    assert innocent["outcome"] == "ok", innocent
    worker.run(LEAKY + "says", "flush", uuid="u-flush")
    log = worker.wait_for_log(f"[{LEAKY}says u-flush]")
    assert "u-innocent] LEFTOVER" not in log
    assert "LEFTOVER EXIT" not in log
    assert "u-stubborn] LEFTOVER REFUSES ITS CANCEL" in log
    # Said once, even for a task that ends on its cancel: a loop-scoped client's background
    # task (a websocket's keepalive) is cancelled so, and the next task fails without it.
    assert log.count("left asyncio tasks pending, cancelled when it ended") == 1, log
    assert (
        f"task {LEAKY}leaves_a_task_pending (uuid u-ticks) left asyncio tasks pending, "
        "cancelled when it ended: leaves_a_task_pending.<locals>.ticks() (asyncio task " in log
    )
    assert (
        f"task {LEAKY}leaves_a_task_pending (uuid u-stubborn) left asyncio tasks pending that "
        "did not end on their cancel (within 1 s): their event loop is closed" in log
    )


def test_a_sync_task_closing_the_event_loop_leaves_async_tasks_a_working_one(
    worker: WorkerProcess,
) -> None:
    assert worker.run(LEAKY + "awaits", 0, uuid="u-first")["outcome"] == "ok"
    closing = worker.run(LEAKY + "closes_the_event_loop", uuid="u-close")
    assert closing["outcome"] == "ok", closing
    after = worker.run(LEAKY + "awaits", 0, uuid="u-after")
    assert after["outcome"] == "ok", after


def test_signal_handlers_masks_and_alarms_a_task_changed_are_put_back(
    worker: WorkerProcess,
) -> None:
    before = worker.run(LEAKY + "signal_state", uuid="u-before", keep_result=True)
    assert worker.run(LEAKY + "changes_signals", uuid="u-change")["outcome"] == "ok"
    after = worker.run(LEAKY + "signal_state", uuid="u-after", keep_result=True)
    assert after["result"] == before["result"] == '{"blocked":[],"ignored":[],"alarm":0.0}'
    log = worker.wait_for_log(f"task {LEAKY}changes_signals (uuid u-change) changed the")
    line = next(line for line in log.splitlines() if "(uuid u-change) changed" in line)
    assert (
        "changed the worker's signals (handlers of SIGUSR1, SIGTERM, SIGRTMIN+4; blocked "
        "SIGUSR1, SIGRTMIN+2; alarm set): put back as the worker set them up" in line
    ), line
    # The cancel signal of run request 4 (this one), which the task had ignored, cancels it.
    worker.send(LEAKY + "sleeps", 5, uuid="u-sleep")
    os.kill(worker.process.pid, CANCEL_SIGNALS[4])
    assert worker.event()["outcome"] == "cancelled"


def test_process_signals_a_task_changed_are_put_back_as_they_were_at_start(
    worker: WorkerProcess,
) -> None:
    """SIGCHLD ignored made the next task's child exit 0; SIGPIPE or SIGXFSZ at their
    default killed the worker on the next write to a closed pipe (or past the size limit)."""
    as_at_start = {"false": 1, "closed pipe": "EPIPE", "SIGINT": "SIG_IGN"}
    before = worker.run(LEAKY + "process_signal_effects", uuid="u-before", keep_result=True)
    assert json.loads(before["result"]) == as_at_start
    assert worker.run(LEAKY + "changes_process_signals", uuid="u-change")["outcome"] == "ok"
    after = worker.run(LEAKY + "process_signal_effects", uuid="u-after", keep_result=True)
    assert after["outcome"] == "ok", after
    assert json.loads(after["result"]) == as_at_start
    log = worker.wait_for_log(f"task {LEAKY}changes_process_signals (uuid u-change) changed")
    assert "changed the worker's signals (handlers of SIGINT, SIGPIPE, SIGCHLD, SIGXFSZ)" in log


def test_an_alarm_the_on_start_hook_left_is_cancelled_and_blamed_on_it(tmp_path: Path) -> None:
    """Not on the first task; the handlers the hook set stay as it set them."""
    hooks = "support.leaky_tasks.SignallingHooks"
    with WorkerProcess(tmp_path / "worker.log", "support.leaky_tasks", hooks=hooks) as worker:
        state = worker.run(LEAKY + "signal_state", uuid="u-first", keep_result=True)
        assert json.loads(state["result"])["alarm"] == 0.0
        effects = worker.run(LEAKY + "process_signal_effects", uuid="u-then", keep_result=True)
        assert json.loads(effects["result"])["false"] == 0  # SIGCHLD ignored, as on_start wants
        log = worker.wait_for_log("worker hook on_start changed the worker's signals (alarm set)")
        assert "u-first) changed" not in log


def test_the_working_directory_and_umask_a_task_changed_are_put_back(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    """The next task ran in a removed directory (``os.getcwd()`` failed), and the files it
    made could not be read (umask 0o777)."""
    before = worker.run(LEAKY + "where_it_works", str(tmp_path / "a"), keep_result=True)
    folder = tmp_path / "gone"
    folder.mkdir()
    assert worker.run(LEAKY + "moves_out", str(folder), uuid="u-move")["outcome"] == "ok"
    after = worker.run(LEAKY + "where_it_works", str(tmp_path / "b"), keep_result=True)
    assert after["outcome"] == "ok", after
    assert json.loads(after["result"]) == json.loads(before["result"])
    log = worker.wait_for_log(f"task {LEAKY}moves_out (uuid u-move) changed the worker's")
    assert (
        "changed the worker's working directory (to a removed directory), umask (to 0o777): "
        "put back as they were, for the tasks that follow (said once per worker)" in log
    ), log


@pytest.mark.parametrize("reader", ["reads_context_variables", "reads_context_variables_async"])
def test_context_variables_a_task_sets_are_not_seen_by_the_next_one(
    worker: WorkerProcess, reader: str
) -> None:
    """A publisher's batch() a task left open held every later task's submissions: each
    .delay() returned a uuid, and nothing was sent."""
    assert worker.run(LEAKY + "sets_context_variables", uuid="u-set")["outcome"] == "ok"
    done = worker.run(LEAKY + reader, uuid="u-read", keep_result=True)
    assert done["outcome"] == "ok", done
    assert json.loads(done["result"]) == "setting=unset open batch=False"


def test_a_forked_child_returning_from_its_task_exits_instead_of_serving(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    children = tmp_path / "children"
    forked = worker.run(LEAKY + "forks_and_returns", str(children), uuid="u-fork")
    assert forked["outcome"] == "ok"
    assert worker.run(LEAKY + "says", "after", uuid="u-after")["outcome"] == "ok"
    assert worker.run(LEAKY + "says", "again", uuid="u-again")["outcome"] == "ok"
    child = int(wait_until(lambda: _whole_line(children), timeout=5))
    wait_until(lambda: _gone(child), timeout=5)
    worker.wait_for_log(f"a process forked by task {LEAKY}forks_and_returns (uuid u-fork)")


def test_a_forked_child_ending_with_sys_exit_exits_with_its_status(
    worker: WorkerProcess,
) -> None:
    for code, status in ((0, 0), (None, 0), (3, 3)):
        done = worker.run(LEAKY + "forks_and_exits", code, uuid=f"u-{code}", keep_result=True)
        assert (done["outcome"], done.get("result")) == ("ok", str(status)), done
    worker.wait_for_log("CHILD SAYS BYE")


def _whole_line(path: Path) -> str:
    """The line the forked child wrote to *path*, once it is all there."""
    text = path.read_text() if path.exists() else ""
    return text if text.endswith("\n") else ""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize(
    ("task", "error"),
    [
        ("raises_unprintable", "_Unprintable: <str() failed: SystemExit>"),
        ("raises_with_a_bad_note", "ValueError: noted"),
        ("raises_with_notes_that_exit", "RuntimeError: noted"),
    ],
)
def test_an_exception_that_cannot_be_rendered_is_the_tasks_error(
    worker: WorkerProcess, task: str, error: str
) -> None:
    done = worker.run(LEAKY + task, uuid="u-bad")
    assert (done["outcome"], done["error"]) == ("error", error)
    assert worker.run(LEAKY + "says", "after", uuid="u-after")["outcome"] == "ok"


def test_a_result_that_cannot_be_described_is_not_kept_and_the_task_ends_ok(
    worker: WorkerProcess,
) -> None:
    done = worker.run(LEAKY + "returns_unrepresentable", uuid="u-result", keep_result=True)
    assert done["outcome"] == "ok", done
    assert done["result_note"].startswith("result not kept: "), done
