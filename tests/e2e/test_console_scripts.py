"""The console scripts are installed and start."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_dispatcher_standalone_is_installed() -> None:
    script = Path(sys.executable).with_name("dispatcher-standalone")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: dispatcher-standalone [-h] [--config FILE]")


def test_dispatcherctl_is_installed_and_tells_its_version() -> None:
    script = Path(sys.executable).with_name("dispatcherctl")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert re.fullmatch(r"dispatcherctl \d+\.\d+\.\d+\S*\n", result.stdout)


def _without_libpq() -> dict[str, str]:
    """An environment where psycopg finds no libpq: it is asked for an implementation (C)
    that is not installed, which it refuses as it refuses a missing libpq."""
    if importlib.util.find_spec("psycopg_c") is not None:
        pytest.skip("psycopg's C implementation is installed: PSYCOPG_IMPL=c would load")
    return {**os.environ, "PSYCOPG_IMPL": "c"}


WHAT_TO_INSTALL = 'pip install "dispatcher-publisher[binary]"'


@pytest.mark.parametrize(
    ("script", "args"),
    [("dispatcherctl", ["status"]), ("dispatcher-standalone", ["--config", "dispatcher.yml"])],
)
def test_without_libpq_the_scripts_say_what_to_install(
    script: str, args: list[str], tmp_path: Path
) -> None:
    (tmp_path / "dispatcher.yml").write_text(
        "version: 1\nbrokers: {pg_notify: {conninfo: 'dbname=x', channels: [c]}}\n"
        "tasks: {modules: [json]}\n"
    )
    result = subprocess.run(
        [str(Path(sys.executable).with_name(script)), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=_without_libpq(),
        cwd=tmp_path,
    )
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{script}: psycopg cannot load libpq, the PostgreSQL client library")
    assert WHAT_TO_INSTALL in line


def test_without_libpq_importing_the_publisher_says_what_to_install() -> None:
    probe = "try:\n    import dispatcher.publish\nexcept ImportError as exc:\n    print(exc)\n"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        env=_without_libpq(),
    )
    assert result.returncode == 0, result.stderr
    assert WHAT_TO_INSTALL in result.stdout
    assert "couldn't import requested psycopg 'c' implementation" in result.stdout
