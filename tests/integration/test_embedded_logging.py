"""A service run in the application's own process leaves the application's logging as it was.

``run_service()`` from a script whose logging shows the process and thread ids (a plain
format, and Django's "verbose" one): every record, the service's and the application's,
is written in that format while the service runs and after it returns, and the logging
module's state is the same after as before.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.service import TESTS, wait_until

SCRIPT = """
import json, logging, logging.config, sys

if sys.argv[2] == "percent":
    logging.basicConfig(
        level=logging.INFO,
        format="APP pid=%(process)d thread=%(thread)d %(threadName)s %(processName)s "
        "%(module)s:%(funcName)s:%(lineno)d %(levelname)s %(name)s: %(message)s",
    )
else:  # Django's "verbose" format
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"verbose": {
            "format": "APP {levelname} {module} pid={process:d} thread={thread:d} {message}",
            "style": "{",
        }},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "verbose"}},
        "root": {"handlers": ["console"], "level": "INFO"},
    })


def state():
    return {
        "logProcesses": logging.logProcesses,
        "logThreads": logging.logThreads,
        "logMultiprocessing": logging.logMultiprocessing,
        "srcfile": logging._srcfile,
        "root": [repr(handler) for handler in logging.root.handlers],
        "root_level": logging.root.level,
        "psycopg_filters": [repr(f) for f in logging.getLogger("psycopg").filters],
        "factory": repr(logging.getLogRecordFactory()),
        "logger_class": repr(logging.getLoggerClass()),
    }


before = state()
from dispatcher.config import setup
from dispatcher.server import run_service

setup(file_path=sys.argv[1])
status = run_service()
logging.getLogger("app").warning("after run_service: %s", status)
print("STATE " + json.dumps({"before": before, "after": state()}), flush=True)
sys.exit(status)
"""


@pytest.mark.parametrize("style", ["percent", "django"])
def test_run_service_keeps_the_apps_logging_as_it_was(
    service_config: dict[str, Any], tmp_path: Path, style: str
) -> None:
    config = tmp_path / "dispatcher.yml"
    config.write_text(json.dumps(service_config))
    output = tmp_path / "output.txt"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(config), style],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={"PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
        )
    try:
        wait_until(lambda: "listening on channels" in output.read_text(), 30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    log = output.read_text()
    assert "Logging error" not in log, log
    pid = process.pid
    for said in ("listening on channels", "dispatcher service .* stopped", "after run_service: 0"):
        lines = [line for line in log.splitlines() if re.search(said, line)]
        assert lines, f"{said!r} not in:\n{log}"
        assert all(line.startswith("APP ") and f"pid={pid} thread=" in line for line in lines)
    (state,) = [line for line in log.splitlines() if line.startswith("STATE ")]
    states = json.loads(state.removeprefix("STATE "))
    assert states["after"] == states["before"]
