"""A web app installs only the schema and publisher distributions: no anyio, no server."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from support.paths import PACKAGES


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_publisher_installs_without_server_or_anyio(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(PACKAGES / "dispatcher-schema"),
            str(PACKAGES / "dispatcher-publisher"),
        ],
        check=True,
    )
    probe = (
        "import importlib.metadata as md, importlib.util, json, sys\n"
        "import dispatcher.config\n"
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
