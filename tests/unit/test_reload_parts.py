"""The pieces of ``--reload``: which folders are watched, which changes count, and how a busy
worker gives back the job it held ahead."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from watchfiles import Change

from dispatcher.schema import Outcome
from dispatcher.server import cli
from dispatcher.server.protocol import CANCEL_SIGNALS
from dispatcher.server.reload import describe, forget_bytecode, is_source, watched_folders
from dispatcher.server.workers import WorkerHandle, WorkerStatus
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
        "dispatcher-standalone: --reload needs watchfiles: pip install 'dispatcher-server[reload]'"
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
    handle.recall_ahead()
    handle.recall_ahead()  # once signalled is enough
    assert process.signals == [CANCEL_SIGNALS[2]]
    running, _ = handle.finish("ok")
    assert running is not None
    assert handle.job is held  # the worker ends it at once
    assert handle.finish("cancelled") == (None, Outcome.CANCELLED)
    assert handle.take_recalled() == [held]
    assert handle.take_recalled() == []
    assert handle.tasks_done == 1
    assert handle.status is WorkerStatus.READY


def test_a_recalled_job_that_ran_all_the_same_ends_as_reported(timers: FakeTimers) -> None:
    process = FakeProcess()
    handle = busy_with_one_ahead(timers, process)
    held = make_job()
    handle.hold_ahead([held])
    handle.recall_ahead()
    handle.finish("ok")
    assert handle.finish("ok") == (held, Outcome.OK)
    assert handle.take_recalled() == []


def test_a_recalled_job_of_a_worker_that_dies_is_given_back(timers: FakeTimers) -> None:
    process = FakeProcess()
    handle = busy_with_one_ahead(timers, process)
    held = make_job()
    handle.hold_ahead([held])
    handle.recall_ahead()
    handle.finish("ok")
    job, outcome, _ = handle.exited()
    assert (job, outcome) == (None, None)
    assert handle.take_recalled() == [held]


def test_a_job_cancelled_ahead_is_not_recalled(timers: FakeTimers) -> None:
    process = FakeProcess()
    handle = busy_with_one_ahead(timers, process)
    held = make_job()
    handle.hold_ahead([held])
    assert handle.cancel_ahead(held)
    handle.recall_ahead()
    assert process.signals == [CANCEL_SIGNALS[2]]  # the cancel's only
    handle.finish("ok")
    assert handle.finish("cancelled") == (held, Outcome.CANCELLED)
    assert handle.take_recalled() == []
