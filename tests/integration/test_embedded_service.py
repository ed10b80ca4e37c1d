"""A service run inside the application's process leaves that process as it found it.

``run_service()`` from a script: the application's objects are collected once it returns.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.service import TESTS, wait_until

pytestmark = pytest.mark.timeout(90)

APP_OBJECTS_COLLECTED = """
import gc, logging, sys, weakref

logging.basicConfig(level=logging.INFO)

from dispatcher.config import setup
from dispatcher.server import run_service


class Node:
    pass


node = Node()
node.itself = node  # a cycle: only the cyclic garbage collector frees it
alive = weakref.ref(node)
setup(file_path=sys.argv[1])
status = run_service()
del node
gc.collect()
print("AFTER", status, alive() is None, flush=True)
"""


def run_app(
    script: str, tmp_path: Path, configs: list[dict[str, Any]], *, services: int = 1
) -> str:
    """Run *script* with the paths of *configs*, stop its services with one SIGTERM once
    *services* listen, and return what it wrote (it must exit with 0)."""
    paths = []
    for n, config in enumerate(configs):
        path = tmp_path / f"dispatcher-{n}.yml"
        path.write_text(json.dumps(config))
        paths.append(str(path))
    output = tmp_path / "output.txt"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", script, *paths],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={"PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
        )
    try:
        wait_until(lambda: output.read_text().count("listening on channels") >= services, 30)
        process.send_signal(signal.SIGTERM)
        status = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    log = output.read_text()
    assert status == 0, log
    return log


def test_run_service_leaves_the_apps_objects_collectable(
    service_config: dict[str, Any], tmp_path: Path
) -> None:
    """It froze every object of the process (gc.freeze()) for good: the application's
    cyclic garbage was never collected again."""
    log = run_app(APP_OBJECTS_COLLECTED, tmp_path, [service_config])
    assert "AFTER 0 True" in log, log
