"""A web app installs only the schema and publisher distributions: no anyio, no server.

The SDK (dispatcher.publish, dispatcher.control, dispatcher.config) imports, and pip finds
nothing missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import PACKAGES
from support.wheels import build_wheels, fresh_environment


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_publisher_installs_without_server_or_anyio(tmp_path: Path) -> None:
    wheels = build_wheels(
        [PACKAGES / "dispatcher-schema", PACKAGES / "dispatcher-publisher"], tmp_path / "wheels"
    )
    env_dir = tmp_path / "venv"
    python = fresh_environment(env_dir, wheels)
    probe = (
        "import importlib.metadata as md, importlib.util, json, sys\n"
        "import dispatcher.config, dispatcher.control, dispatcher.publish\n"
        "settings = dispatcher.config.setup({'version': 1})\n"
        "installed = sorted(d.metadata['Name'].lower() for d in md.distributions())\n"
        "print(json.dumps({\n"
        "  'installed': installed,\n"
        "  'server_importable': importlib.util.find_spec('dispatcher.server') is not None,\n"
        "  'anyio_loaded': 'anyio' in sys.modules,\n"
        "  'version': settings.version,\n"
        "}))\n"
    )
    result = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    report = json.loads(result.stdout)
    assert "dispatcher-schema" in report["installed"]
    assert "dispatcher-publisher" in report["installed"]
    assert "anyio" not in report["installed"]
    assert "dispatcher-server" not in report["installed"]
    assert report["server_importable"] is False
    assert report["anyio_loaded"] is False
    assert report["version"] == 1
    assert sys.prefix != str(env_dir)
    checked = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "check"],
        capture_output=True,
        text=True,
    )
    assert (checked.returncode, checked.stdout) == (0, "No broken requirements found.\n")
