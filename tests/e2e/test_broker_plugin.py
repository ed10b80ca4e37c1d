"""A third-party broker plug-in, built and installed, carries a task and a control command.

The example plug-in (tests/plugins/dispatcher-example-broker) moves messages as files in a
spool directory: no database is involved at all.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.paths import PACKAGES, REPO
from support.wheels import build_wheels, fresh_environment

PLUGIN = REPO / "tests" / "plugins" / "dispatcher-example-broker"
SOURCES = [
    PACKAGES / "dispatcher-schema",
    PACKAGES / "dispatcher-publisher",
    PACKAGES / "dispatcher-server",
    PLUGIN,
]

TASKS = """
from dispatcher.publish import task


@task(queue="work")
def signal_done(fifo: str, text: str) -> None:
    with open(fifo, "w") as out:
        out.write(text)
"""

PUBLISHER = """
import json, sys
from dispatcher.config import setup
from dispatcher.control import control_with_reply
from plugin_tasks import signal_done

setup(file_path=sys.argv[1])
sent = signal_done.delay(sys.argv[2], "ran through the plug-in")
result = control_with_reply("alive", timeout=60)
print(json.dumps({"channel": sent.channel, "replies": result.replies}))
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the three distributions and the plug-in, as wheels."""
    wheels = build_wheels(SOURCES, tmp_path_factory.mktemp("wheels"))
    env = tmp_path_factory.mktemp("plugin-env") / "venv"
    fresh_environment(env, wheels)
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_plugin_broker_carries_a_task_and_a_control_command(
    plugin_env: Path, tmp_path: Path
) -> None:
    (tmp_path / "plugin_tasks.py").write_text(TASKS)
    (tmp_path / "publisher.py").write_text(PUBLISHER)
    config = tmp_path / "dispatcher.yml"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "brokers": {
                    "example_spool": {"directory": str(tmp_path / "spool"), "queues": ["work"]}
                },
                "tasks": {"modules": ["plugin_tasks"]},
                "service": {"node_id": "plugin-e2e", "pool": {"min_workers": 1, "max_workers": 1}},
                "publish": {
                    "default_broker": "example_spool",
                    "default_control_broker": "example_spool",
                },
            }
        )
    )
    fifo = tmp_path / "done.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open before any writer: never blocks
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    service = subprocess.Popen(
        [str(plugin_env / "bin" / "dispatcher-standalone"), "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The spool keeps what is written before the service reads it: no need to wait for it.
        published = subprocess.run(
            [str(plugin_env / "bin" / "python"), "publisher.py", str(config), str(fifo)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode == 0, published.stderr[-3000:]
        sent = json.loads(published.stdout)
        assert sent["channel"] == "work"
        assert [reply["node_id"] for reply in sent["replies"]] == ["plugin-e2e"]

        readable, _, _ = select.select([reader], [], [], 60)
        assert readable, "the task did not run"
        assert os.read(reader, 100) == b"ran through the plug-in"

        ctl = subprocess.run(
            [
                str(plugin_env / "bin" / "dispatcherctl"),
                *("--config", str(config), "--timeout", "30", "--json", "status"),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ctl.returncode == 0, ctl.stderr[-3000:]
        [status] = json.loads(ctl.stdout)
        assert status["node_id"] == "plugin-e2e"

        # A durable broker hears how each delivery ended: the task, the two control
        # commands, and a message the service refuses.
        spooled = tmp_path / "spool" / "queues" / "work"
        (spooled / "bad.tmp").write_text('{"task": "plugin_tasks.nope"}\n')
        (spooled / "bad.tmp").rename(spooled / "bad.msg")
        settled_file = tmp_path / "spool" / "settled.jsonl"

        def settled() -> list[dict[str, str]]:
            if not settled_file.exists():
                return []
            return [json.loads(line) for line in settled_file.read_text().splitlines()]

        deadline = time.monotonic() + 30
        while len(settled()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        outcomes = sorted(s["outcome"] for s in settled())
        assert outcomes == ["ok", "ok", "ok", "rejected"], settled()
        [rejected] = [s for s in settled() if s["outcome"] == "rejected"]
        assert "plugin_tasks.nope" in rejected["reason"]
        assert len({s["receipt"] for s in settled()}) == 4
    finally:
        os.close(reader)
        service.send_signal(signal.SIGTERM)
        try:
            _, errors = service.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
            _, errors = service.communicate()
    assert service.returncode == 0, errors[-3000:]
