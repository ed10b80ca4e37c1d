"""Task modules that misbehave as they are imported: the service still refuses, fast and clearly.

Each case is a module that does something a newcomer's (or an attacker's) module could do
at import: end the process, raise what ``except Exception`` would not catch, hang, or raise
an error whose text would forge log lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.faults import fault_env
from support.service import (
    TESTS,
    ServiceProcess,
    alive,
    children,
    standalone_command,
    wait_until,
    worker_pids,
)

HANG_SECONDS = 45.0
"""Longest a refusal may take, from the start of the process, before it is taken for a hang.

Not how fast it is: starting the interpreter and the fork server alone takes seconds on a
loaded machine (10 s were seen on one loaded five times over). That it came at once is
checked by what the service did not do: say that the import was slow (as it does after 10 s
of it), or wait for the end of the socket a module's child holds (for a minute: longer)."""
STOP_SECONDS = 2.0
"""Longest a service still importing its task modules may take to stop on SIGTERM."""
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ |  \| )")
"""How every line the service writes starts: a time stamp, or a block's indent."""

MODULES = {
    "exits_t": "import os\n\nos._exit(7)\n",
    "forks_t": (  # its child holds the fork server's socket open after it ends
        "import os\nimport time\n\npid = os.fork()\nif pid == 0:\n    time.sleep(60)\n"
        "    os._exit(0)\nwith open(__file__ + '.pid', 'w') as f:\n    f.write(str(pid))\n"
        "os._exit(5)\n"
    ),
    "system_exit_t": "raise SystemExit(4)\n",
    "interrupt_t": "raise KeyboardInterrupt\n",
    "hangs_t": "import time\n\ntime.sleep(600)\n",
    "flips_t": (  # imports until the flag file exists: a dependency gone in mid-life
        "import os\n\nfrom dispatcher.publish import task\n\n"
        "if os.path.exists(os.environ['FLIP_FLAG']):\n"
        "    raise RuntimeError('dependency went away')\n\n\n"
        "@task()\ndef ping() -> str:\n    return 'pong'\n"
    ),
    "hooks_t": "raise ImportError('no module named nonexistent_dep (simulated)')\n",
    "forges_t": (
        "raise RuntimeError('bad\\n2026-01-01 00:00:00,000 CRITICAL dispatcher.service: "
        "forged\\x1b[31m\\u2028also forged\\x00')\n"
    ),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    for name, source in MODULES.items():
        (folder / f"{name}.py").write_text(source)
    return folder


def start(
    config: dict[str, Any],
    module: str,
    project: Path,
    tmp_path: Path,
    env: dict[str, str] | None = None,
) -> ServiceProcess:
    config["tasks"]["modules"] = [module]
    folder = tmp_path / "service"
    folder.mkdir(parents=True)
    path = os.pathsep.join([str(project), str(TESTS)])
    return ServiceProcess(config, folder, env={"PYTHONPATH": path, **(env or {})}).start()


def catches(pid: int, number: int) -> bool:
    """Tell whether process *pid* has a handler for signal *number* (it is past start-up)."""
    status = Path(f"/proc/{pid}/status").read_text()
    [mask] = re.findall(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return bool(int(mask, 16) >> (number - 1) & 1)


def assert_log_lines_are_the_services(log: str) -> None:
    for line in log.splitlines():
        assert LOG_LINE.match(line), f"a line not of the service's making: {line!r}"


def test_a_module_that_ends_the_process_is_refused_with_its_exit_status(
    service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    service = start(service_config, "exits_t", project, tmp_path)
    assert service.wait(HANG_SECONDS) == 3, service.log
    log = service.log
    assert "cannot start: the fork server ended (exit status 7) while it imported" in log
    assert "still importing" not in log  # not taken for a slow import
    assert "os._exit()" in log
    assert "a new one starts" not in log  # none will: the service does not start
    assert "listening on" not in log
    assert_log_lines_are_the_services(log)


def test_a_module_whose_child_outlives_the_fork_server_is_refused_at_once(
    service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    service = start(service_config, "forks_t", project, tmp_path)
    try:
        # (Waiting for the end of the socket, which the child holds for a minute, the
        # refusal would be taken for a hang.)
        assert service.wait(HANG_SECONDS) == 3, service.log
        assert "the fork server ended (exit status 5) while it imported" in service.log
        assert "still importing" not in service.log  # not taken for a slow import
    finally:
        child = project / "forks_t.py.pid"
        wait_until(child.exists, timeout=10)
        # (Gone if the service had adopted it, its fork server ending after the service
        # began to adopt orphans: it kills those it adopted as it stops.)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(
    ("module", "error"),
    [("system_exit_t", "error: SystemExit: 4"), ("interrupt_t", "error: KeyboardInterrupt")],
)
def test_exceptions_beyond_exception_are_refused_like_any_other(
    module: str,
    error: str,
    service_config: dict[str, Any],
    project: Path,
    tmp_path: Path,
) -> None:
    service = start(service_config, module, project, tmp_path)
    assert service.wait(HANG_SECONDS) == 3, service.log
    assert f"cannot import task module {module!r}" in service.log
    assert f"  | {error}\n" in service.log
    assert f"  | at: {project / module}.py:1\n" in service.log


def test_an_error_text_cannot_forge_log_lines(
    service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    service = start(service_config, "forges_t", project, tmp_path)
    assert service.wait(HANG_SECONDS) == 3, service.log
    log = service.log
    assert_log_lines_are_the_services(log)
    assert "\x1b" not in log
    assert "\\x1b[31m" in log
    assert "  | 2026-01-01 00:00:00,000 CRITICAL dispatcher.service: forged" in log


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", ["starting", "waiting"])
def test_a_hanging_import_is_waited_for_and_a_sigterm_ends_it_at_once(
    when: str, service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    """SIGTERM as the command starts, or once the service waits for the import (10 s)."""
    service = start(service_config, "hangs_t", project, tmp_path)
    wait_until(lambda: catches(service.pid, signal.SIGTERM), timeout=10, interval=0.001)
    forked: set[int] = set()
    if when == "waiting":
        service.wait_for_log(r"still importing tasks.modules after 10 s", timeout=30)
        forked = children(service.pid)  # the fork server, importing
        assert forked
    assert service.process is not None
    assert service.process.poll() is None  # no refusal: a slow import is not an error
    began = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.wait(10) == 0, service.log
    assert time.monotonic() - began < STOP_SECONDS, service.log
    assert "listening on" not in service.log
    wait_until(lambda: not any(alive(pid) for pid in forked), timeout=5)


@pytest.mark.timeout(120)
def test_a_sigterm_at_any_moment_of_the_start_stops_the_service_quietly(
    service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    # Landing in the middle of an import, it once came out as a RuntimeError (Python wraps
    # what a class's __set_name__ raises) or as death by SIGINT, about one start in three.
    for attempt in range(12):
        service = start(service_config, "hangs_t", project, tmp_path / str(attempt))
        pid = service.pid
        wait_until(lambda pid=pid: catches(pid, signal.SIGTERM), timeout=10, interval=0.001)
        time.sleep(attempt * 0.01)  # the scenario: each time a little further into the start
        service.signal(signal.SIGTERM)
        assert service.wait(HANG_SECONDS) == 0, service.log
        assert "Traceback" not in service.log
        service.kill_everything()


@pytest.mark.timeout(120)
def test_two_stop_signals_at_once_during_the_start_stop_the_service_once(
    service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    # A terminal's SIGINT and a process manager's SIGTERM together: one stop, at once.
    for attempt in range(6):
        service = start(service_config, "hangs_t", project, tmp_path / str(attempt))
        pid = service.pid
        wait_until(lambda pid=pid: catches(pid, signal.SIGTERM), timeout=10, interval=0.001)
        time.sleep(attempt * 0.02)
        began = time.monotonic()
        service.signal(signal.SIGINT)
        service.signal(signal.SIGTERM)
        assert service.wait(HANG_SECONDS) == 0, service.log
        assert time.monotonic() - began < STOP_SECONDS, service.log
        assert "Traceback" not in service.log
        service.kill_everything()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_the_service_starts_stops_it_quietly(
    number: signal.Signals, service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    """Sent as soon as the command's own code runs: before the service handles signals."""
    service = start(service_config, "support.service_tasks", project, tmp_path)
    wait_until(lambda: catches(service.pid, signal.SIGTERM), timeout=10, interval=0.001)
    service.signal(number)
    assert service.wait(HANG_SECONDS) == 0, service.log
    assert "received SIG" not in service.log  # (it came before the service's own handling)
    assert "Traceback" not in service.log
    assert_log_lines_are_the_services(service.log)


@pytest.mark.parametrize(
    "module", ["argparse", "logging", "dispatcher.schema", "dispatcher.config"]
)
def test_a_sigterm_while_the_command_imports_its_modules_stops_it_quietly(
    module: str, service_config: dict[str, Any], tmp_path: Path
) -> None:
    """Held from the command's first lines, before its imports: not lost to the default action.

    (Which kills the process, or, for PID 1 of a container, ignores the signal: the
    container runs on until killed.) The signal is sent as *module* begins to be imported.
    """
    service_config["tasks"]["modules"] = ["support.service_tasks"]
    env = fault_env(sigterm_on_import=module)
    service = ServiceProcess(service_config, tmp_path, env=env).start()
    assert service.wait(20) == 0, service.log
    assert "Traceback" not in service.log
    assert "started" not in service.log


@pytest.mark.timeout(60)
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_the_wait_for_a_config_file_that_is_a_pipe(
    number: signal.Signals, tmp_path: Path
) -> None:
    """``--config /dev/stdin`` in a terminal, or a named pipe no one writes: Ctrl-C stops it."""
    fifo = tmp_path / "dispatcher.yml"
    os.mkfifo(fifo)
    command = [*standalone_command(), "--config", str(fifo)]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            wchan = Path(f"/proc/{process.pid}/wchan")
            wait_until(lambda: "partner" in wchan.read_text(), timeout=20, interval=0.01)
            began = time.monotonic()
            process.send_signal(number)
            assert process.wait(10) == 0
            assert time.monotonic() - began < STOP_SECONDS
            assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
        finally:
            process.kill()


@pytest.mark.parametrize("section", ["scheduled", "on_start"])
def test_a_producer_naming_an_unregistered_task_is_refused_with_a_suggestion(
    start_service: Any, service_config: dict[str, Any], section: str
) -> None:
    entry = {"schedule": 60} if section == "scheduled" else {}
    service_config["producers"] = {section: {"support.service_tasks.recrod": entry}}
    service = start_service(service_config, wait=False)
    assert service.wait(30) == 3, service.log
    log = service.log
    assert (
        f"CRITICAL dispatcher.service: cannot start: producers.{section}"
        "['support.service_tasks.recrod']: no such registered task; "
        "did you mean 'support.service_tasks.record'?\n"
    ) in log, log
    assert f"  | hint: in {service.config_path}, name each task by its registered name" in log
    assert "started (pid" not in log
    assert "Traceback" not in log


def test_a_task_module_that_fails_in_mid_life_is_said_as_at_start(
    service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    """The fork server, replaced, imports afresh: the module fails now. No traceback."""
    flag = tmp_path / "flip.flag"
    service = start(service_config, "flips_t", project, tmp_path, {"FLIP_FLAG": str(flag)})
    service.wait_ready()
    flag.touch()
    [fork_server] = children(service.pid) - worker_pids(service.pid)
    os.kill(fork_server, signal.SIGKILL)  # its replacement imports the module again
    assert service.wait(20) == 3
    log = service.log
    assert (
        "CRITICAL dispatcher.service: workers cannot start, stopping: cannot import task "
        f"module 'flips_t' (tasks.modules in {service.config_path})\n"
        "  | error: RuntimeError: dependency went away\n"
        f"  | at: {project / 'flips_t.py'}:6\n"
    ) in log
    assert "Traceback" not in log
    assert_log_lines_are_the_services(log)


def test_a_worker_class_that_cannot_be_imported_is_named_so(
    service_config: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    service_config["worker"] = {"class": "hooks_t.AppWorker"}
    service = start(service_config, "support.service_tasks", project, tmp_path)
    assert service.wait(20) == 3
    log = service.log
    assert (
        "CRITICAL dispatcher.service: workers cannot start, stopping: cannot import "
        f"worker.class 'hooks_t.AppWorker' (worker.class in {service.config_path})\n"
        "  | error: ImportError: no module named nonexistent_dep (simulated)\n"
        f"  | at: {project / 'hooks_t.py'}:1\n"
    ) in log
    assert "Traceback" not in log
    assert "tasks.modules" not in log
