"""A failed task's traceback starts at the task's own code, not at the worker's."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from dispatcher.publish import task
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.worker_frames import RUNNER_FILES
from dispatcher.server.worker_runner import TaskRunner
from support.no_capture import NoCapture

PREFIX = "tests_unit_tracebacks_t."


def _inner() -> None:
    raise KeyError("inner")


@task(name=PREFIX + "fails")
def fails() -> None:
    raise ValueError("sync failure")


@task(name=PREFIX + "fails_chained")
def fails_chained() -> None:
    try:
        _inner()
    except KeyError as exc:
        raise RuntimeError("outer") from exc


@task(name=PREFIX + "fails_async")
async def fails_async() -> None:
    raise ValueError("async failure")


class Unprintable(Exception):
    """An exception whose text cannot be had: its ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("str boom")

    def __repr__(self) -> str:
        raise RuntimeError("repr boom")


@task(name=PREFIX + "fails_unprintably")
def fails_unprintably() -> None:
    raise Unprintable


@task(name=PREFIX + "ok")
def ok() -> None:
    pass


def run(task_name: str, **extra: Any) -> dict[str, Any]:
    runner = TaskRunner(0, None, BaseWorker(0), NoCapture())  # type: ignore[arg-type]
    try:
        return runner.run({"task": PREFIX + task_name, "uuid": "u-1", **extra})
    finally:
        runner.close()


def frames(text: str) -> list[str]:
    """The function names of the ``File "...", line N, in name`` lines of *text*."""
    return re.findall(r'File "[^"]+", line \d+, in (\S+)$', text, re.MULTILINE)


def assert_starts_at_the_task(text: str, function: str) -> None:
    assert text.startswith("Traceback (most recent call last):\n"), text
    assert frames(text)[0] == function, text
    assert not [path for path in RUNNER_FILES if path in text], text


def test_a_sync_tasks_traceback_starts_at_its_own_frame() -> None:
    done = run("fails")
    assert done["outcome"] == "error"
    assert_starts_at_the_task(done["traceback"], "fails")
    assert done["traceback"].rstrip().endswith("ValueError: sync failure")


def test_an_async_tasks_traceback_starts_at_its_own_frame() -> None:
    done = run("fails_async")
    assert_starts_at_the_task(done["traceback"], "fails_async")
    assert "asyncio" not in done["traceback"]


def test_a_chained_exception_is_kept_whole() -> None:
    text = run("fails_chained")["traceback"]
    assert_starts_at_the_task(text, "fails_chained")
    assert "The above exception was the direct cause of the following exception:" in text
    assert frames(text) == ["fails_chained", "_inner", "fails_chained"]
    assert "KeyError: 'inner'" in text


def test_a_failing_callback_logs_a_traceback_from_its_own_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="dispatcher.worker"):
        done = run("ok", callbacks=[{"task": PREFIX + "fails"}])
    assert done["outcome"] == "ok"
    [record] = [r for r in caplog.records if "callback" in r.getMessage()]
    message = record.getMessage()
    assert "Traceback (most recent call last):" in message
    assert frames(message)[0] == "fails", message
    assert not [path for path in RUNNER_FILES if path in message], message


def test_an_exception_whose_text_cannot_be_had_is_still_an_error() -> None:
    done = run("fails_unprintably")
    assert done["outcome"] == "error"
    assert done["error"] == "Unprintable: <str() failed: RuntimeError>"
    assert_starts_at_the_task(done["traceback"], "fails_unprintably")


def test_a_callback_whose_exception_has_no_text_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="dispatcher.worker"):
        done = run(
            "ok", callbacks=[{"task": PREFIX + "fails_unprintably"}, {"task": PREFIX + "ok"}]
        )
    assert done["outcome"] == "ok"
    [record] = [r for r in caplog.records if "callback" in r.getMessage()]
    assert "failed: Unprintable: <str() failed: RuntimeError>" in record.getMessage()
