"""Fresh virtual environments with some of the project's distributions installed as wheels.

The wheels are built with the test environment's hatchling (no isolated build environment
to set up), and pip runs from the test environment into the new one (``--python``), so a
fresh environment costs no ``ensurepip``.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from collections.abc import Iterable
from pathlib import Path


def build_wheels(sources: Iterable[Path], into: Path) -> list[Path]:
    """Build a wheel of each project directory in *sources* into *into*; return their paths."""
    for source in sources:
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(into)],
            cwd=source,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return sorted(into.glob("*.whl"))


def fresh_environment(path: Path, wheels: Iterable[Path]) -> Path:
    """Create a virtual environment at *path* with *wheels* (and their dependencies) installed.

    Returns the environment's ``python``.
    """
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--disable-pip-version-check"]
        + [str(wheel) for wheel in wheels],
        check=True,
        timeout=600,
    )
    return python
