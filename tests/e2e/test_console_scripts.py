"""The console scripts are installed and start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


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
