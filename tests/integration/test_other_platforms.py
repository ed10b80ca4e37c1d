"""The publisher SDK and ``dispatcherctl`` on Windows (simulated), against a real service.

A laptop on Windows shares the service's config (which may have ``brokers.socket``, of no
use off the service's host), publishes tasks, sends control commands, watches ``top``, and
uses the async API, whose psycopg connections cannot run on Windows' default event loop.
See ``support/platforms/sitecustomize.py`` for what the simulation takes away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.platforms import platform_env
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(90)

StartService = Callable[..., ServiceProcess]


def on_windows(*args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` as on Windows; its output and exit status."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_CONFIG_FILE")}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **platform_env("windows")},
    )


def ctl_on_windows(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dispatcherctl ARGS --config CONFIG`` as on Windows."""
    return on_windows("-m", "dispatcher.server.ctl", *args, "--config", str(config))


def script_on_windows(code: str, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run *code* as on Windows, after ``setup(config)``."""
    prelude = f"from dispatcher.config import setup\nsetup({config!r})\n"
    return on_windows("-c", prelude + textwrap.dedent(code))


def with_socket(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """*config* with ``brokers.socket`` too, as on the service's host."""
    brokers = {**config["brokers"], "socket": {"path": str(folder / "dispatcher.sock")}}
    return {**config, "brokers": brokers}


def test_tasks_submitted_from_windows_arrive(
    pg_conn: psycopg.Connection[Any], channel: str, service_config: dict[str, Any], tmp_path: Path
) -> None:
    pg_conn.execute(f'LISTEN "{channel}"')
    result = script_on_windows(
        "from dispatcher.publish import submit_task\nsubmit_task('myapp.tasks.hello', args=[1])\n",
        with_socket(service_config, tmp_path),
    )
    assert (result.returncode, result.stderr) == (0, "")
    [received] = list(pg_conn.notifies(timeout=10, stop_after=1))
    assert json.loads(received.payload)["task"] == "myapp.tasks.hello"


def test_dispatcherctl_on_windows_controls_through_pg_notify_despite_a_socket_in_the_config(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path
) -> None:
    service_config["service"]["node_id"] = "linux-host"
    service = start_service(with_socket(service_config, tmp_path))
    shared = service.config_path  # the service's own config file, socket and all

    alive = ctl_on_windows(shared, "alive", "--json")
    assert (alive.returncode, alive.stderr) == (0, "")
    assert [reply["node_id"] for reply in json.loads(alive.stdout)] == ["linux-host"]

    top = ctl_on_windows(shared, "top", "--once", "--json")
    assert (top.returncode, top.stderr) == (0, "")
    assert [reply["node_id"] for reply in json.loads(top.stdout)["replies"]] == ["linux-host"]

    explicit = tmp_path / "socket-control.yml"
    explicit.write_text(
        json.dumps({**service.config, "publish": {"default_control_broker": "socket"}})
    )
    refused = ctl_on_windows(explicit, "alive")
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert "no Unix sockets" in refused.stderr
    assert "publish.default_control_broker: pg_notify" in refused.stderr


def test_the_async_api_on_windows_default_loop_says_to_use_a_selector_loop(
    pg_conn: psycopg.Connection[Any], channel: str, service_config: dict[str, Any]
) -> None:
    pg_conn.execute(f'LISTEN "{channel}"')
    code = """
        import asyncio
        from dispatcher.publish import asubmit_task

        try:
            asyncio.run(asubmit_task("myapp.tasks.proactor"))
        except Exception as exc:
            print(type(exc).__name__, exc)
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(asubmit_task("myapp.tasks.selector"))
        print("sent")
    """
    result = script_on_windows(code, service_config)
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    refusal, sent = result.stdout.splitlines()
    assert refusal.startswith("AsyncioRequired ")
    assert "ProactorEventLoop" in refusal
    assert "asyncio.run(main(), loop_factory=asyncio.SelectorEventLoop)" in refusal
    assert sent == "sent"
    [received] = list(pg_conn.notifies(timeout=10, stop_after=1))
    assert json.loads(received.payload)["task"] == "myapp.tasks.selector"


def test_eager_async_tasks_run_on_a_selector_loop_on_windows() -> None:
    code = """
        import asyncio
        from dispatcher.publish import task
        from dispatcher.testing import eager

        @task(queue="q")
        async def loop_kind() -> str:
            return type(asyncio.get_running_loop()).__name__

        with eager() as runs:
            loop_kind.delay()
        print(runs.runs[0].result)
    """
    result = on_windows("-c", textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "_UnixSelectorEventLoop\n"  # (Windows' SelectorEventLoop, here)


def test_a_secret_file_with_a_byte_order_mark_signs_as_the_same_secret_without(
    start_service: StartService,
    service_config: dict[str, Any],
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    plain, marked = tmp_path / "secret", tmp_path / "secret-bom"
    plain.write_bytes(b"shared secret\n")
    marked.write_bytes(b"\xef\xbb\xbfshared secret\r\n")  # as Windows' Notepad saves it
    service_config["security"] = {
        "keys": [{"id": "k1", "secret_file": str(plain)}],
        "require_signed": ["task"],
    }
    start_service(service_config)
    publisher = {**service_config, "security": {"keys": [{"id": "k1", "secret_file": str(marked)}]}}
    code = f"""
        from dispatcher.publish import submit_task
        submit_task("support.service_tasks.record", args=[{str(evidence.path)!r}, "signed"])
    """
    result = on_windows(
        "-c", f"from dispatcher.config import setup\nsetup({publisher!r})\n" + textwrap.dedent(code)
    )
    assert (result.returncode, result.stderr) == (0, "")
    [record] = evidence.wait_for(1)
    assert record["args"] == ["signed"]
