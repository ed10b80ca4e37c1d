"""The README's publisher example works as written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dispatcher.config import reset
from dispatcher.publish import close_connections, registry
from support.paths import REPO
from support.postgres import wait_for_notifies


def python_block_after(heading: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


@pytest.fixture
def clean() -> Iterator[None]:
    yield
    close_connections()
    reset()
    registry.unregister("readme_example.print_hello")


def test_readme_publisher_example(pg_dsn: str, channel: str, clean: None) -> None:
    code = python_block_after("Publishing tasks")
    assert "dbname=postgres user=postgres host=127.0.0.1" in code
    code = code.replace("dbname=postgres user=postgres host=127.0.0.1", pg_dsn)
    code = code.replace("test_channel", channel)
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(code, "README.md", "exec"), namespace)
        messages = [json.loads(n.payload) for n in wait_for_notifies(listener, 3, timeout=2)]
    assert [m["task"] for m in messages] == ["readme_example.print_hello"] * 2
    assert "timeout" not in messages[0]
    assert messages[1]["timeout"] == 5
    assert messages[1]["args"] == []


def test_readme_schema_example_prints_what_it_says() -> None:
    import ast

    imports, _, check, call, result = python_block_after("The wire format").strip().splitlines()
    namespace: dict[str, Any] = {}
    exec(imports, namespace)
    assert eval(check.split("  #")[0], namespace) is True
    assert eval(call, namespace) == ast.literal_eval(result.removeprefix("# "))
