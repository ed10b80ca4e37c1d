"""The working directory and umask a worker puts back after a task (``PlaceKeeper``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from dispatcher.server.worker_places import PlaceKeeper


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_directory_renamed_from_outside_is_still_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same directory under a new path is not a change: the tasks stay in it, no word."""
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    keeper = PlaceKeeper()
    keeper.keep()
    first.rename(tmp_path / "renamed")
    keeper.check("t", "u-renamed")
    assert os.getcwd() == str(tmp_path / "renamed")
    assert _warnings(caplog) == []
    os.chdir(tmp_path)
    keeper.check("t", "u-moved")
    assert os.getcwd() == str(tmp_path / "renamed")
    assert _warnings(caplog) == [
        f"task t (uuid u-moved) changed the worker's working directory (to {tmp_path}): put "
        "back as they were, for the tasks that follow (said once per worker)"
    ]


def test_the_directory_is_found_by_its_path_when_its_descriptor_was_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    keeper = PlaceKeeper()
    keeper.keep()
    for fd in map(int, os.listdir("/proc/self/fd")):  # the one kept on the directory
        if fd > 2 and os.path.realpath(f"/proc/self/fd/{fd}") == str(tmp_path):
            os.close(fd)
    os.chdir("/")
    keeper.check("t", "u")
    assert os.getcwd() == str(tmp_path)


def test_nothing_is_put_back_before_the_worker_took_its_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    keeper = PlaceKeeper()
    os.chdir("/")
    keeper.check("t", "u")
    assert os.getcwd() == "/"
