"""The README's publisher example works as written."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import reset
from dispatcher.publish import close_connections, registry
from support.paths import REPO
from support.postgres import wait_for_notifies


def python_blocks_after(heading: str) -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, f"no python block under {heading!r}"
    return blocks


def python_block_after(heading: str) -> str:
    return python_blocks_after(heading)[0]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Nothing named myapp importable but what the test writes in *tmp_path*."""
    for name in [name for name in sys.modules if name.partition(".")[0] == "myapp"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    close_connections()
    reset()
    registry.unregister("myapp.tasks.print_hello")
    for name in ("myapp.tasks", "myapp"):
        sys.modules.pop(name, None)


def test_readme_publisher_example(
    pg_dsn: str,
    channel: str,
    clean: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    module, script = python_blocks_after("Publishing tasks")
    assert module.startswith("# myapp/tasks.py")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(module.replace("test_channel", channel))
    assert "dbname=postgres user=postgres host=127.0.0.1" in script
    script = script.replace("dbname=postgres user=postgres host=127.0.0.1", pg_dsn)
    script = script.replace("test_channel", channel)
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        namespace: dict[str, Any] = {"__name__": "__main__"}  # run as a script is
        exec(compile(script, "README.md", "exec"), namespace)
        messages = [json.loads(n.payload) for n in wait_for_notifies(listener, 3, timeout=2)]
    assert [m["task"] for m in messages] == ["myapp.tasks.print_hello"] * 2
    assert "timeout" not in messages[0]
    assert messages[1]["timeout"] == 5
    assert messages[1]["args"] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_readme_schema_example_prints_what_it_says() -> None:
    import ast

    imports, _, check, call, result = python_block_after("The wire format").strip().splitlines()
    namespace: dict[str, Any] = {}
    exec(imports, namespace)
    assert eval(check.split("  #")[0], namespace) is True
    assert eval(call, namespace) == ast.literal_eval(result.removeprefix("# "))
