"""``dispatcher-standalone`` with no config file anywhere: what to do, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUN_CLI = "import sys; from dispatcher.server.cli import main; sys.exit(main(sys.argv[1:]))"


def test_no_config_file_says_how_to_give_one_and_exits_2(tmp_path: Path) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DISPATCHER_CONFIG_FILE", "DISPATCHERD_CONFIG_FILE")
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "dispatcher-standalone: no config file found: pass --config FILE, or set "
        "DISPATCHER_CONFIG_FILE (or DISPATCHERD_CONFIG_FILE), or create dispatcher.yml in "
        f"the working directory ({tmp_path})"
    ]
    assert "setup(" not in done.stderr
