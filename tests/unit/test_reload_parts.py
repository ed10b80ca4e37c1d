"""The pieces of ``--reload``: which folders are watched, which changes count, and how a busy
worker gives back the jobs it held ahead."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest
from watchfiles import Change

from dispatcher.publish import task
from dispatcher.schema import Outcome
from dispatcher.server import cli
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.jobs import Job
from dispatcher.server.protocol import CANCEL_SIGNALS, RECALL_SIGNAL
from dispatcher.server.reload import describe, forget_bytecode, is_source, watched_folders
from dispatcher.server.worker_runner import TaskRunner
from dispatcher.server.workers import WorkerHandle
from support.no_capture import NoCapture
from support.scheduling import FakeProcess, FakeTimers, make_job


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``single.py``, package ``pkg`` (with ``pkg.sub`` and ``pkg.inner`` package), on a path."""
    (tmp_path / "single.py").write_text("")
    (tmp_path / "pkg" / "inner").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/sub.py", "pkg/inner/__init__.py"):
        (tmp_path / name).write_text("")
    return tmp_path


def test_a_module_file_is_watched_through_its_folder_a_package_through_its_own(
    tree: Path,
) -> None:
    path = [str(tree)]
    assert watched_folders(["single"], path) == [tree.resolve()]
    assert watched_folders(["pkg"], path) == [(tree / "pkg").resolve()]
    assert watched_folders(["pkg.sub"], path) == [(tree / "pkg").resolve()]
    assert watched_folders(["pkg.inner"], path) == [(tree / "pkg" / "inner").resolve()]


def test_folders_inside_another_watched_one_are_left_out_and_missing_modules_ignored(
    tree: Path,
) -> None:
    path = [str(tree)]
    assert watched_folders(["pkg.inner", "pkg", "nowhere", "single.nothing"], path) == [
        (tree / "pkg").resolve()
    ]
    assert watched_folders(["single", "pkg"], path) == [tree.resolve()]


def test_nothing_is_imported_to_find_the_folders(tree: Path) -> None:
    (tree / "pkg" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    assert watched_folders(["pkg.sub"], [str(tree)]) == [(tree / "pkg").resolve()]


@pytest.mark.parametrize(
    ("path", "counts"),
    [
        ("/code/app/tasks.py", True),
        ("/code/app/tasks.txt", False),
        ("/code/app/.#tasks.py", False),  # Emacs lock
        ("/code/app/#tasks.py#", False),  # Emacs autosave
        ("/code/app/.tasks.py.swp", False),  # Vim swap
        ("/code/app/tasks.py~", False),  # backup
        ("/code/app/__pycache__/tasks.py", False),
        ("/code/.venv/lib/site.py", False),
    ],
)
def test_only_python_sources_count(path: str, counts: bool) -> None:
    assert is_source(Change.modified, path) is counts


def test_the_cached_bytecode_of_a_changed_file_is_deleted(tmp_path: Path) -> None:
    source = tmp_path / "tasks.py"
    source.write_text("")
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.parent.mkdir()
    cached.write_bytes(b"stale")
    forget_bytecode([str(source), str(tmp_path / "gone.py")])
    assert not cached.exists()


def test_describe_names_the_first_file_and_counts_the_others() -> None:
    assert describe(["/a.py"]) == "/a.py"
    assert describe(["/a.py", "/b.py", "/c.py"]) == "/a.py (and 2 more)"


def test_reload_without_watchfiles_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = importlib.util.find_spec

    def without_watchfiles(name: str, package: str | None = None) -> object:
        return None if name == "watchfiles" else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_watchfiles)
    assert cli.main(["--reload", "--config", "never-read.yml"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        'dispatcher-standalone: --reload needs watchfiles: pip install "dispatcher-server[reload]"'
    ]


# -- a busy worker's job held ahead, recalled --------------------------------------------


@pytest.fixture
def timers() -> FakeTimers:
    return FakeTimers()


def busy_with_one_ahead(timers: FakeTimers, process: FakeProcess) -> WorkerHandle:
    handle = WorkerHandle(3, timers, 2.0, clock=timers.clock)
    handle.attach(process)
    assert handle.ready()
    handle.run(make_job())  # request 1
    return handle


def test_a_recalled_job_ended_unstarted_is_given_back_not_ended(timers: FakeTimers) -> None:
    process = FakeProcess()
    handle = busy_with_one_ahead(timers, process)
    held = make_job()
    handle.hold_ahead([held])  # request 2, held ahead
    assert handle.recall_ahead()
    assert handle.recall_ahead()  # once signalled is enough
    assert process.signals == [RECALL_SIGNAL]
    assert handle.room_ahead == 0  # a recalled worker is sent nothing more
    running, _ = handle.finish("ok")
    assert running is not None
    assert handle.job is held  # as far as the service knows, it may have started
    assert handle.finish("recalled") == (None, Outcome.CANCELLED)
    assert handle.take_unstarted() == [held]
    assert handle.take_unstarted() == []
    assert handle.tasks_done == 1
    assert handle.status is WorkerStatus.READY


def recalled_with_two_held(timers: FakeTimers) -> tuple[WorkerHandle, Job, Job]:
    """A busy worker holding two jobs, recalled; the first held one has its turn."""
    handle = busy_with_one_ahead(timers, FakeProcess())
    first, second = make_job(), make_job()
    handle.hold_ahead([first, second])
    assert handle.recall_ahead()
    handle.finish("ok")
    return handle, first, second


def test_a_recalled_job_the_worker_had_started_ends_as_reported_once(
    timers: FakeTimers,
) -> None:
    handle, first, second = recalled_with_two_held(timers)
    assert handle.finish("error") == (first, Outcome.ERROR)  # it had started: not given back
    assert handle.finish("recalled") == (None, Outcome.CANCELLED)
    assert handle.take_unstarted() == [second]
    assert handle.tasks_done == 2


def test_a_recalled_worker_that_dies_loses_the_job_it_may_have_started(
    timers: FakeTimers,
) -> None:
    handle, first, second = recalled_with_two_held(timers)
    job, outcome, expected = handle.exited()  # before it said whether it started `first`
    assert (job, outcome, expected) == (first, Outcome.WORKER_LOST, False)
    assert handle.take_ahead() == ([second], [])  # never started: it runs elsewhere
    assert handle.take_unstarted() == []


def test_a_worker_holding_nothing_is_not_recalled(timers: FakeTimers) -> None:
    process = FakeProcess()
    handle = busy_with_one_ahead(timers, process)
    assert not handle.recall_ahead()
    assert process.signals == []
    assert handle.room_ahead > 0  # it may still be sent jobs


def test_a_job_cancelled_ahead_is_not_recalled(timers: FakeTimers) -> None:
    process = FakeProcess()
    handle = busy_with_one_ahead(timers, process)
    held = make_job()
    handle.hold_ahead([held])
    assert handle.cancel_ahead(held)
    assert not handle.recall_ahead()  # nothing left to recall
    assert process.signals == [CANCEL_SIGNALS[2]]  # the cancel's only
    handle.finish("ok")
    assert handle.finish("cancelled") == (held, Outcome.CANCELLED)
    assert handle.take_unstarted() == []


def test_a_recalled_job_that_was_also_cancelled_ends_cancelled(timers: FakeTimers) -> None:
    process = FakeProcess()
    handle = busy_with_one_ahead(timers, process)
    first, second = make_job(), make_job()
    handle.hold_ahead([first, second])
    handle.recall_ahead()
    assert handle.cancel_ahead(second)
    handle.finish("ok")
    assert handle.finish("recalled") == (None, Outcome.CANCELLED)
    assert handle.finish("cancelled") == (second, Outcome.CANCELLED)
    assert handle.take_unstarted() == [first]


# -- the worker's side of a recall --------------------------------------------------------


RAN: list[str] = []


@task(name="tests_unit_reload_parts.record")
def record(label: str, recall: bool = False) -> None:
    RAN.append(label)
    if recall:  # the recall signal comes while this task runs
        RUNNER[0].on_recall_signal(RECALL_SIGNAL, None)


RUNNER: list[TaskRunner] = []


def take(runner: TaskRunner, label: str, recall: bool = False) -> str:
    runner.requests += 1
    message = {"uuid": label, "task": "tests_unit_reload_parts.record", "args": [label, recall]}
    return str(runner.take({"op": "run", "message": message})["outcome"])


@pytest.fixture
def runner() -> TaskRunner:
    RAN.clear()
    RUNNER[:] = [TaskRunner(0, None, BaseWorker(0), NoCapture())]  # type: ignore[arg-type]
    return RUNNER[0]


def test_a_worker_recalled_while_a_task_runs_ends_every_later_request_unstarted(
    runner: TaskRunner,
) -> None:
    assert take(runner, "first") == "ok"
    assert take(runner, "running", recall=True) == "ok"  # started: it runs to its end
    assert [take(runner, label) for label in ("held-1", "held-2")] == ["recalled"] * 2
    assert take(runner, "sent-later") == "recalled"  # hence no more is sent to it
    assert RAN == ["first", "running"]


def test_a_recall_signal_between_two_requests_recalls_the_next_one(runner: TaskRunner) -> None:
    assert take(runner, "first") == "ok"
    runner.on_recall_signal(RECALL_SIGNAL, None)
    runner.on_recall_signal(RECALL_SIGNAL, None)  # a second changes nothing
    assert take(runner, "held") == "recalled"
    assert RAN == ["first"]


def test_a_recalled_request_that_was_cancelled_reports_cancelled(runner: TaskRunner) -> None:
    assert take(runner, "first", recall=True) == "ok"
    runner.on_cancel_request(CANCEL_SIGNALS[2], None)  # request 2, not started
    assert take(runner, "held") == "cancelled"
    assert take(runner, "next") == "recalled"
    assert RAN == ["first"]


def test_the_recall_signal_is_a_real_time_signal_apart_from_the_cancels() -> None:
    assert RECALL_SIGNAL not in CANCEL_SIGNALS
    assert signal.SIGRTMIN <= RECALL_SIGNAL <= signal.SIGRTMAX
