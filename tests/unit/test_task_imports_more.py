"""Task modules that fail to import in unusual ways still get a short, true report."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.server.task_imports import import_report, refusal, unregistered_producers

NAMES = ("badstr_t", "stdlib_raise_t", "dependency_t")


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "badstr_t.py").write_text(
        "class Odd(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no text')\n"
        "raise Odd()\n"
    )
    (tmp_path / "stdlib_raise_t.py").write_text('import json\n\nSETTINGS = json.loads("{no")\n')
    (tmp_path / "dependency_t.py").write_text("import a_dependency_installed_nowhere_t\n")
    yield tmp_path
    for name in NAMES:
        sys.modules.pop(name, None)


def text_of(report: dict[str, object], module: str) -> str:
    text = refusal(report, [module], "d.yml")
    assert text is not None
    return text


def test_an_exception_whose_text_cannot_be_made_is_still_reported(modules: Path) -> None:
    report = import_report(["badstr_t"])
    assert report["ok"] is False
    assert report["error"] == "Odd: (its message cannot be shown: str() raised RuntimeError)"
    assert report["location"] == f"{modules / 'badstr_t.py'}:4"


def test_an_error_raised_in_the_standard_library_names_the_users_line(modules: Path) -> None:
    report = import_report(["stdlib_raise_t"])
    assert report["location"] == f"{modules / 'stdlib_raise_t.py'}:3"
    assert str(report["raised_in"]).startswith(json.__file__.rsplit("/", 1)[0])
    lines = text_of(report, "stdlib_raise_t").splitlines()
    assert lines[2] == f"at: {modules / 'stdlib_raise_t.py'}:3"
    assert lines[3].startswith("raised in: ")


def test_a_missing_dependency_is_told_apart_from_a_missing_task_module(modules: Path) -> None:
    dependency = text_of(import_report(["dependency_t"]), "dependency_t")
    assert "hint: the task module imports 'a_dependency_installed_nowhere_t'" in dependency
    assert "PYTHONPATH=" not in dependency
    itself = text_of(import_report(["nowhere_t.tasks"]), "nowhere_t.tasks")
    assert "PYTHONPATH=" in itself


def test_a_module_missing_from_a_found_package_is_said_so(modules: Path) -> None:
    package = modules / "own_pkg_t"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text("import own_pkg_t.helpers_t\n")
    try:
        absent = text_of(import_report(["own_pkg_t.absent"]), "own_pkg_t.absent")
        misspelt = text_of(import_report(["own_pkg_t.jobs"]), "own_pkg_t.jobs")
    finally:
        for name in ("own_pkg_t", "own_pkg_t.jobs"):
            sys.modules.pop(name, None)
    assert "hint: the package 'own_pkg_t' was found, but holds no module 'absent'" in absent
    assert "PYTHONPATH=" not in absent
    assert "hint: 'own_pkg_t.helpers_t', imported by the task module, is not in its" in misspelt


def test_a_file_name_in_tasks_modules_gets_the_module_name(modules: Path) -> None:
    (modules / "named_t.py").write_text("")
    try:
        text = text_of(import_report(["named_t.py"]), "named_t.py")
    finally:
        sys.modules.pop("named_t", None)
    assert "hint: tasks.modules lists module names, not file names: write 'named_t'" in text
    assert "PYTHONPATH=" not in text


def test_modules_without_tasks_say_where_they_were_loaded_from(modules: Path) -> None:
    report = {**import_report(["json"]), "task_count": 0}  # (other tests register tasks)
    text = text_of(report, "json")
    assert "register no task" in text.splitlines()[0]
    assert f"json was loaded from {json.__file__}" in text.splitlines()


def test_a_fork_server_that_ended_while_importing_gives_its_exit_status() -> None:
    text = text_of({"ok": False, "ended": 7}, "m")
    assert text.splitlines()[0] == (
        "the fork server ended (exit status 7) while it imported tasks.modules, before it "
        "could report"
    )
    assert "os._exit()" in text


@pytest.mark.parametrize("layout", ["file", "package"])
def test_a_task_module_next_to_the_config_file_names_that_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """``cd /tmp && dispatcher-standalone --config nbq/dispatcher.yml``, tasks in nbq/."""
    project = tmp_path / "nbq"
    project.mkdir()
    (project / "dispatcher.yml").write_text("version: 1\n")
    if layout == "file":
        (project / "beside_config_t.py").write_text("")
    else:
        (project / "beside_config_t").mkdir()
        (project / "beside_config_t" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    report = import_report(["beside_config_t"])
    text = refusal(report, ["beside_config_t"], "nbq/dispatcher.yml")
    assert text is not None
    hint = text.splitlines()[-1]
    assert hint.startswith("hint: "), text
    assert "config file's folder" in hint, text
    assert hint.endswith(f"(e.g. PYTHONPATH={project})"), text
    assert f"PYTHONPATH={tmp_path})" not in text


def test_a_task_module_found_nowhere_keeps_the_general_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dispatcher.yml").write_text("version: 1\n")
    monkeypatch.chdir(tmp_path)
    text = refusal(import_report(["absent_t"]), ["absent_t"], "dispatcher.yml")
    assert text is not None
    assert "config file's folder" not in text
    assert "hint: Python looks for task modules on sys.path" in text


def test_producers_naming_no_registered_task_are_listed_with_suggestions() -> None:
    report = {"ok": True, "task_count": 2, "task_names": ["app.tasks.hello", "app.tasks.bye"]}
    producers = {
        "scheduled": ["app.tasks.helo", "app.tasks.bye"],
        "on_start": ["hello", "app.other.zzz"],
    }
    text = unregistered_producers(report, producers, "d.yml")
    assert text is not None
    assert text.splitlines()[:3] == [
        "producers.scheduled['app.tasks.helo']: no such registered task; "
        "did you mean 'app.tasks.hello'?",
        "producers.on_start['hello']: no such registered task; did you mean 'app.tasks.hello'?",
        "producers.on_start['app.other.zzz']: no such registered task",
    ]
    assert text.splitlines()[3].startswith("hint: in d.yml, name each task by its registered")
    assert unregistered_producers(report, {"scheduled": ["app.tasks.bye"]}, "d.yml") is None
