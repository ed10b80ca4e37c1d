"""What a type checker sees of the public API: ``mypy --strict`` on typed snippets of use.

``typed_snippets/correct_use.py`` and the testing example (``docs/examples/testing``) must
check clean; each line of ``typed_snippets/wrong_use.py`` marked ``# error: [code]`` must be
reported with that code, and no other line. One mypy run serves every test (its cache makes
runs after the first quick).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.paths import REPO

pytest.importorskip("mypy", reason="mypy is not installed (a dev dependency)")

SNIPPETS = Path(__file__).parent / "typed_snippets"
EXAMPLE = REPO / "docs" / "examples" / "testing"
REPORTED = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")
EXPECTED = re.compile(r"  # error: \[(?P<code>[a-z-]+)\]$")


@pytest.fixture(scope="module")
def reported() -> dict[tuple[str, int], set[str]]:
    """Run mypy once on the snippets and the example: ``{(file name, line): {codes}}``."""
    env = {**os.environ, "MYPYPATH": str(EXAMPLE)}
    files = [SNIPPETS / "correct_use.py", SNIPPETS / "wrong_use.py", EXAMPLE]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--show-error-codes"]
        + [str(path) for path in files],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    found: dict[tuple[str, int], set[str]] = {}
    for line in done.stdout.splitlines():
        match = REPORTED.match(line)
        if match is not None:
            key = (Path(match["path"]).name, int(match["line"]))
            found.setdefault(key, set()).add(match["code"])
    return found


def marked(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = EXPECTED.search(line)
        if match is not None:
            yield number, match["code"]


@pytest.mark.parametrize("name", ["correct_use.py", "orders.py", "test_orders.py", "conftest.py"])
def test_typed_use_checks_clean(reported: dict[tuple[str, int], set[str]], name: str) -> None:
    assert {key: codes for key, codes in reported.items() if key[0] == name} == {}


def test_mistakes_are_reported_where_marked(reported: dict[tuple[str, int], set[str]]) -> None:
    expected = dict(marked(SNIPPETS / "wrong_use.py"))
    assert len(expected) >= 8
    found = {line: codes for (name, line), codes in reported.items() if name == "wrong_use.py"}
    assert {line: code in found.get(line, set()) for line, code in expected.items()} == {
        line: True for line in expected
    }
    assert sorted(found) == sorted(expected)  # and nothing else
