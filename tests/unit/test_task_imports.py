"""The fork server's report on the task modules, and the refusal the service makes of it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.server.task_imports import import_report, missing_modules, refusal


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "syntax_tasks_t.py").write_text("x = 1\ndef broken(:\n")
    (tmp_path / "deep_tasks_t.py").write_text("import deep_helper_t\n")
    (tmp_path / "deep_helper_t.py").write_text("\n\nraise RuntimeError('no config')\n")
    yield tmp_path
    for name in ("syntax_tasks_t", "deep_tasks_t", "deep_helper_t"):
        sys.modules.pop(name, None)


def test_a_syntax_error_is_located_at_its_line(modules: Path) -> None:
    report = import_report(["syntax_tasks_t"])
    assert report["ok"] is False
    assert report["error"].startswith("SyntaxError: ")
    assert report["location"] == f"{modules / 'syntax_tasks_t.py'}:2"
    assert report["import_error"] is False


def test_an_error_raised_in_a_module_it_imports_names_that_line(modules: Path) -> None:
    report = import_report(["deep_tasks_t"])
    assert (report["module"], report["error"]) == ("deep_tasks_t", "RuntimeError: no config")
    assert report["location"] == f"{modules / 'deep_helper_t.py'}:3"
    text = refusal(report, ["deep_tasks_t"], "d.yml")
    assert text is not None
    assert text.splitlines() == [
        "cannot import task module 'deep_tasks_t' (tasks.modules in d.yml)",
        "error: RuntimeError: no config",
        f"at: {modules / 'deep_helper_t.py'}:3",
    ]


def test_a_missing_module_gets_the_working_directory_and_a_hint(modules: Path) -> None:
    report = import_report(["not_a_module_anywhere_t"])
    assert report["location"] is None
    text = refusal(report, ["not_a_module_anywhere_t"], "d.yml")
    assert text is not None
    assert "error: ModuleNotFoundError: No module named 'not_a_module_anywhere_t'" in text
    assert f"working directory: {modules} (on sys.path)" in text
    assert "hint: " in text
    assert "PYTHONPATH" in text


def test_refusals_without_a_report_or_without_tasks() -> None:
    ended = refusal(None, ["a"], "d.yml")
    assert ended is not None
    assert ended.startswith("the fork server ended while it imported tasks.modules")
    no_tasks = refusal({"ok": True, "task_count": 0}, ["a", "b"], "d.yml")
    assert no_tasks is not None
    assert no_tasks.startswith("tasks.modules in d.yml (a, b) register no task")
    assert refusal({"ok": True, "task_count": 2}, ["a"], "d.yml") is None
    assert missing_modules([], "d.yml") is not None
    assert missing_modules(["a"], "d.yml") is None


def test_a_worker_class_whose_module_is_missing_gets_a_hint_not_the_services_own_line(
    modules: Path,
) -> None:
    """The import is the service's own code: no line of it is the user's to look at."""
    from dispatcher.server.worker_start import StartFailed, import_task_code

    (modules / "hooks_pkg_t").mkdir()
    (modules / "hooks_pkg_t" / "__init__.py").write_text("")
    try:
        with pytest.raises(StartFailed) as caught:
            import_task_code((), "hooks_pkg_t.worker.AppWorker", 0)
    finally:
        sys.modules.pop("hooks_pkg_t", None)
    text = refusal(caught.value.report, [], "d.yml")
    assert text is not None
    assert text.splitlines() == [
        "cannot import worker.class 'hooks_pkg_t.worker.AppWorker' (worker.class in d.yml)",
        "error: ModuleNotFoundError: No module named 'hooks_pkg_t.worker'",
        f"working directory: {modules} (on sys.path)",
        text.splitlines()[3],  # sys.path, as for a task module
        "hint: the package 'hooks_pkg_t' was found, but holds no module 'worker': check the "
        "name in worker.class",
    ]
    assert text.splitlines()[3].startswith("sys.path: ")
