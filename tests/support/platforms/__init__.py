"""Other platforms simulated in subprocesses (see ``sitecustomize`` here)."""

from __future__ import annotations

import os
from pathlib import Path

from support.paths import REPO

FOLDER = Path(__file__).resolve().parent

PLATFORMS = ("windows", "macos", "old-linux", "blocked-pidfd-signal")
"""The platforms the ``sitecustomize`` here simulates."""


def platform_env(platform: str) -> dict[str, str]:
    """The environment of a subprocess that runs as on *platform* (one of :data:`PLATFORMS`)."""
    assert platform in PLATFORMS, platform
    path = os.pathsep.join([str(FOLDER), str(REPO / "tests")])
    return {"PYTHONPATH": path, "DISPATCHER_SIMULATED_PLATFORM": platform}
