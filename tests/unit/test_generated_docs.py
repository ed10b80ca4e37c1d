"""The reference pages are generated from the schemas and must be current."""

from __future__ import annotations

import importlib.util

from support.paths import REPO


def test_reference_pages_are_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "tools" / "gen_docs.py")
    assert spec is not None
    assert spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    pages = tool.expected_pages()
    assert len(pages) == 2
    for path, text in pages.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run `hatch run generate-docs`"
        )


def test_every_config_key_is_in_the_reference() -> None:
    text = (REPO / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    for key in (
        "brokers.pg_notify.channels",
        "service.pool.max_tasks_per_worker",
        "producers.scheduled.<task name>.schedule",
        "worker.idle_timeout",
    ):
        assert f"`{key}`" in text
