"""What a user of Windows, macOS or an old Linux sees, simulated in subprocesses.

The publisher SDK and ``dispatcherctl`` import and run everywhere; the service runs on
Linux 5.3 or later only, and its commands say so in one line (exit status 2) elsewhere,
rather than failing with a traceback or running without workers. See
``support/platforms/sitecustomize.py`` for what each simulation takes away.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from support.paths import REPO
from support.platforms import platform_env
from support.tools import load_tool

pytestmark = pytest.mark.timeout(60)

DJANGO_PROJECT = REPO / "tests" / "django_project"


def run_as(
    platform: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` as on *platform*; its output and exit status."""
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_CONFIG_FILE")}
    environment.update(platform_env(platform))
    if env is not None:
        environment.update({"PYTHONPATH": environment["PYTHONPATH"], **env})
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=50,
        env=environment,
        cwd=cwd,
    )


def test_the_publisher_sdk_imports_on_windows() -> None:
    modules = [
        "dispatcher.schema",
        "dispatcher.config",
        "dispatcher.publish",
        "dispatcher.control",
        "dispatcher.testing",
        "dispatcher.testing.pytest_plugin",
        "dispatcher.server.ctl",
        "dispatcher.server.ctl_top",
        "dispatcher.server.ctl_top_poll",
    ]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sys.platform, 'ok')"
    result = run_as("windows", "-c", code)
    assert (result.stdout, result.stderr) == ("win32 ok\n", "")


@pytest.mark.parametrize(
    ("platform", "said"),
    [
        ("windows", "not on Windows: run it in a Linux container"),
        ("macos", "not on macOS: run it in a Linux container"),
        ("old-linux", "pidfd_open fails here (Function not implemented): the kernel is older"),
        ("blocked-pidfd-signal", "pidfd_send_signal fails here (Operation not permitted)"),
    ],
)
def test_the_service_refuses_to_start_where_it_cannot_run_saying_why(
    platform: str, said: str, tmp_path: Path
) -> None:
    result = run_as(platform, "-m", "dispatcher.server", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "dispatcher-standalone: the dispatcher service runs on Linux 5.3 or later"
    )
    assert said in line
    if platform in ("old-linux", "blocked-pidfd-signal"):
        assert "seccomp" in line
        assert "Docker before 20.10" in line


def test_the_service_says_its_version_on_windows() -> None:
    result = run_as("windows", "-m", "dispatcher.server", "--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"dispatcher-server {metadata.version('dispatcher-server')}\n"


def test_rundispatcher_refuses_to_start_on_macos_saying_why() -> None:
    django_env = {
        "PYTHONPATH": os.pathsep.join(
            [*platform_env("macos")["PYTHONPATH"].split(os.pathsep), str(DJANGO_PROJECT)]
        ),
        "DJANGO_SETTINGS_MODULE": "demo_site.settings",
        "DEMO_SITE_DSN": "host=127.0.0.1 dbname=unused",
        "DEMO_SITE_SCHEMA": "unused",
        "DEMO_SITE_CHANNEL": "unused",
    }
    result = run_as("macos", "manage.py", "rundispatcher", cwd=DJANGO_PROJECT, env=django_env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "the dispatcher service runs on Linux 5.3 or later, not on macOS" in result.stderr


def test_the_type_check_as_on_windows_covers_every_module_dispatcherctl_imports() -> None:
    code = (
        "import sys, dispatcher.server.ctl, dispatcher.server.ctl_top_poll\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items()"
        " if n.partition('.')[2].startswith('server')))"
    )
    result = run_as("windows", "-c", code)
    assert result.returncode == 0, result.stderr
    imported = {str(Path(path).relative_to(REPO)) for path in result.stdout.split()}
    checked = set(load_tool("mypy_platforms").portable_paths())
    assert sorted(imported - checked) == []


def test_importing_run_service_on_windows_says_where_the_service_runs() -> None:
    code = (
        "from dispatcher.server.host import UnsupportedHost\n"
        "try:\n"
        "    from dispatcher.server import run_service\n"
        "except UnsupportedHost as exc:\n"
        "    print(exc)\n"
    )
    result = run_as("windows", "-c", code)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(
        "the dispatcher service runs on Linux 5.3 or later, not on Windows"
    )


EMBEDDED_RUNS = """
import asyncio, signal, sys
from dispatcher.config import setup
from dispatcher.server import Service, run_service
from dispatcher.server.host import UnsupportedHost

signal.alarm(20)  # (a service that ran would run without workers, for ever)
setup(config={"version": 1, "tasks": {"modules": ["support.service_tasks"]}})
try:
    run_service()
except UnsupportedHost as exc:
    print("run_service:", exc)

async def main():
    from dispatcher.config import get_settings
    await Service(get_settings()).run()

try:
    asyncio.run(main())
except UnsupportedHost as exc:
    print("Service.run:", exc)
"""


@pytest.mark.parametrize(
    ("platform", "call"),
    [("old-linux", "pidfd_open"), ("blocked-pidfd-signal", "pidfd_send_signal")],
)
def test_an_embedded_service_refuses_to_run_where_it_cannot_saying_why(
    platform: str, call: str, tmp_path: Path
) -> None:
    result = run_as(platform, "-c", EMBEDDED_RUNS, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    said = [line.partition(": ") for line in result.stdout.splitlines()]
    assert [who for who, _, _ in said] == ["run_service", "Service.run"]
    for _, _, why in said:
        assert why.startswith("the dispatcher service runs on Linux 5.3 or later: ")
        assert f"{call} fails here" in why


TESTING_ON_THE_DEFAULT_LOOP = """
import asyncio
from dispatcher.config import setup
from dispatcher.testing import captured, eager
from support.testing_tasks import add

setup(config={"version": 1, "brokers": {"pg_notify": {
    "conninfo": "host=127.0.0.1 port=1 dbname=unused", "default_publish_channel": "orders"}}})

async def main() -> None:
    print(type(asyncio.get_running_loop()).__name__)
    with eager() as mode:
        await add.adelay(3, 4)
        print("eager", mode.runs[-1].result)
    with captured() as tasks:
        await add.adelay(1, 2)
        print("captured", len(tasks.for_task(add)))
    try:
        await add.adelay(5, 6)  # a real send: psycopg's async connections cannot run here
    except Exception as exc:
        print(type(exc).__name__, "ProactorEventLoop" in str(exc))

asyncio.run(main())
"""


def test_the_testing_helpers_take_async_submissions_on_windows_default_loop() -> None:
    # Nothing connects under dispatcher.testing: the ProactorEventLoop serves there.
    result = run_as("windows", "-c", TESTING_ON_THE_DEFAULT_LOOP)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "ProactorEventLoop",
        "eager 7",
        "captured 1",
        "AsyncioRequired True",
    ]
