"""The sync twins are generated from their async sources and must be current."""

from __future__ import annotations

import pytest

from support.paths import REPO
from support.tools import load_tool

GENERATED = {
    "packages/dispatcher-publisher/src/dispatcher/publish/submit_sync.py": "submit_async.py",
    "packages/dispatcher-publisher/src/dispatcher/publish/notify_sync.py": "notify_async.py",
    "packages/dispatcher-publisher/src/dispatcher/publish/slots_sync.py": "slots_async.py",
    "packages/dispatcher-publisher/src/dispatcher/publish/provider_sync.py": "provider_async.py",
    "packages/dispatcher-publisher/src/dispatcher/publish/provider_registry_sync.py": (
        "provider_registry_async.py"
    ),
    "packages/dispatcher-publisher/src/dispatcher/publish/queue_sync.py": "queue_async.py",
    "packages/dispatcher-publisher/src/dispatcher/control/client_sync.py": "client_async.py",
    "tests/integration/test_publish.py": "test_publish_async.py",
    "tests/integration/test_control_client.py": "test_control_client_async.py",
    "tests/integration/test_publish_durable.py": "test_publish_durable_async.py",
}
"""Each generated file, and the name of the async file it is generated from."""


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """What the generator would write now, by path relative to the repository."""
    outputs = load_tool("async_to_sync").expected_outputs()
    return {path.relative_to(REPO).as_posix(): text for path, text in outputs.items()}


def test_every_twin_is_generated(expected: dict[str, str]) -> None:
    assert sorted(expected) == sorted(GENERATED)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_file_is_current(expected: dict[str, str], name: str) -> None:
    assert (REPO / name).read_text(encoding="utf-8") == expected[name], (
        f"{name} is stale: run `hatch run generate-sync`"
    )


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_file_says_so_and_from_what(name: str) -> None:
    lines = (REPO / name).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith('"""')
    assert (
        f"Generated from ``{GENERATED[name]}`` by ``tools/async_to_sync.py``; do not edit."
        in lines[:5]
    )
