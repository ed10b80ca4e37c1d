"""The sync twins are generated from their async sources and must be current."""

from __future__ import annotations

import importlib.util

from support.paths import REPO


def test_generated_sync_modules_are_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "async_to_sync", REPO / "tools" / "async_to_sync.py"
    )
    assert spec is not None
    assert spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for target, text in tool.expected_outputs().items():
        assert target.read_text(encoding="utf-8") == text, (
            f"{target.name} is stale: run `hatch run generate-sync`"
        )
