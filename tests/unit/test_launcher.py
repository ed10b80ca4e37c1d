"""The launcher starts workers through a real fork server, and replaces one that stops answering."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from dispatcher.config import Limits, Pool, load_settings
from dispatcher.config import Service as ServiceSettings
from dispatcher.server import launched_process as launched_process_module
from dispatcher.server import launcher as launcher_module
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.forkserver import worker_options
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.launch_errors import LaunchError
from dispatcher.server.launched_process import WorkerProcess
from dispatcher.server.launcher import WorkerLauncher
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.stats import ServiceStats
from dispatcher.server.supervisor import Supervisor
from dispatcher.server.timers import Timers
from dispatcher.server.worker import WorkerOptions
from dispatcher.server.workers import WorkerHandle


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError(f"no parent for {pid}")


async def first_event(process: WorkerProcess) -> dict[str, object]:
    """The worker's first event (``ready``), read from its socket."""
    data = b""
    with anyio.fail_after(10):
        while not data.endswith(b"\n"):
            await anyio.wait_readable(process.sock)
            chunk = process.sock.recv(65536)
            assert chunk, "the worker closed its socket"
            data += chunk
    event: dict[str, object] = json.loads(data.splitlines()[0])
    return event


@pytest.mark.anyio
async def test_a_fork_server_that_stops_answering_is_replaced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOPped (or stuck): without a limit, no worker would ever start again, silently."""
    monkeypatch.setattr(launcher_module, "FORK_ANSWER_WAIT", 0.3)
    options = WorkerOptions(
        worker_id=0,
        modules=("support.service_tasks",),
        hooks_class=None,
        idle_timeout=None,
        log_level=logging.WARNING,
    )
    ended: list[tuple[int, int]] = []
    launcher = WorkerLauncher(options, on_exit=lambda pid, status: ended.append((pid, status)))
    launcher.start()
    stopped = -1
    try:
        first = await launcher.launch(0)
        assert (await first_event(first))["event"] == "ready"
        stopped = parent_of(first.pid)
        os.kill(stopped, signal.SIGSTOP)
        began = time.monotonic()
        with (
            caplog.at_level(logging.ERROR, logger="dispatcher.launcher"),
            pytest.raises(LaunchError, match="the fork server did not answer"),
        ):
            await launcher.launch(1)
        assert time.monotonic() - began < 3
        assert [r.getMessage() for r in caplog.records] == [
            f"the fork server (pid {stopped}) did not answer a fork request within 0.3 s "
            "(stopped, or stuck?): killing it, with its 1 worker; a new one starts with the "
            "next worker"
        ]
        assert await first.wait(5)  # its workers went with it
        # ... by their parent-death signal, which the fork server can no longer report.
        assert ended == [(first.pid, -signal.SIGKILL)]
        second = await launcher.launch(2)
        assert (await first_event(second))["event"] == "ready"
        assert parent_of(second.pid) != stopped
        first.close()
        second.close()
    finally:
        if stopped > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        launcher.close()


@pytest.mark.anyio
async def test_a_fork_server_started_as_a_program_runs_on_the_service_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config the service runs on is the one in force where the task modules run.

    Not the one the environment (or ``./dispatcher.yml``) names, nor none at all.
    """
    probe = tmp_path / "probe.json"
    elsewhere = tmp_path / "elsewhere.yml"
    elsewhere.write_text(
        json.dumps(
            {
                "version": 1,
                "brokers": {"pg_notify": {"conninfo": "dbname=elsewhere", "channels": ["no"]}},
            }
        )
    )
    monkeypatch.setenv("DISPATCHER_TEST_CONFIG_PROBE", str(probe))
    monkeypatch.setenv("DISPATCHER_CONFIG_FILE", str(elsewhere))
    config = {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": "dbname=probe", "channels": ["the_service_s"]}},
        "tasks": {"modules": ["support.config_probe"]},
    }
    settings = load_settings(config, source="service.yml")
    launcher = WorkerLauncher(worker_options(settings, logging.WARNING))
    launcher.start()  # no fork server forked at start-up: it is started as a program
    try:
        worker = await launcher.launch(0)
        assert (await first_event(worker))["event"] == "ready"
        worker.close()
    finally:
        launcher.close()
    assert json.loads(probe.read_text()) == {"source": "service.yml", "channels": ["the_service_s"]}


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_a_fork_server_started_as_a_program_takes_and_gives_messages_of_any_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config of 4,000 long channel names in, the report of 4,000 tasks out.

    Each once had to fit in one 64 KiB packet: the fork server could not read its settings,
    or the service waited for its report for ever.
    """
    probe = tmp_path / "probe.json"
    monkeypatch.setenv("DISPATCHER_TEST_CONFIG_PROBE", str(probe))
    monkeypatch.syspath_prepend(str(tmp_path))  # (the fork server gets this sys.path)
    names = [f"t{n}" for n in range(4000)]
    (tmp_path / "unit_many_tasks.py").write_text(
        "from dispatcher.publish import task\n"
        + "".join(f"\n\n@task()\ndef {name}():\n    pass\n" for name in names)
    )
    channels = [f"c{n}_" + "x" * 50 for n in range(4000)]
    config = {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": "dbname=probe", "channels": channels}},
        "tasks": {"modules": ["support.config_probe", "unit_many_tasks"]},
    }
    settings = load_settings(config, source="service.yml")
    launcher = WorkerLauncher(worker_options(settings, logging.WARNING))
    launcher.start()
    try:
        with anyio.fail_after(60):
            report = await launcher.import_report()
        assert report is not None
        assert (report["ok"], report["task_count"]) == (True, 4000)
        assert report["task_names"] == sorted(f"unit_many_tasks.{name}" for name in names)
        worker = await launcher.launch(0)
        assert (await first_event(worker))["event"] == "ready"
        worker.close()
    finally:
        launcher.close()
    assert json.loads(probe.read_text()) == {"source": "service.yml", "channels": channels}


@pytest.mark.anyio
async def test_workers_the_service_killed_with_a_silent_fork_server_are_said_so_not_blamed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not "a worker hook, on_idle?", and no pause of the starts: the service killed them."""
    monkeypatch.setattr(launcher_module, "FORK_ANSWER_WAIT", 0.3)
    options = WorkerOptions(
        worker_id=0,
        modules=("support.service_tasks",),
        hooks_class=None,
        idle_timeout=None,
        log_level=logging.WARNING,
    )
    launcher = WorkerLauncher(options)
    settings = ServiceSettings(pool=Pool(min_workers=2, max_workers=2, max_worker_lifetime=None))
    timers, stats = Timers(), ServiceStats()
    scheduler = Scheduler(Limits(), timers, stats, workers=lambda: supervisor.workers)
    supervisor = Supervisor(
        settings, launcher, timers, scheduler, TaskCatalogue(), stats, on_fatal=lambda error: None
    )
    launcher.on_exit = supervisor.worker_exited

    async def until(condition: Callable[[], object]) -> None:
        with anyio.fail_after(30):
            while not condition():
                await anyio.sleep(0.01)

    def ready() -> list[WorkerHandle]:
        return [w for w in supervisor.workers if w.status is WorkerStatus.READY]

    def lines() -> list[str]:
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]

    stopped = -1
    try:
        with caplog.at_level(logging.INFO, logger="dispatcher"):
            async with anyio.create_task_group() as group:
                await group.start(supervisor.run)
                await until(lambda: len(ready()) == 2)
                first, second = sorted(ready(), key=lambda w: w.id)
                assert first.pid is not None
                assert second.pid is not None
                stopped = parent_of(first.pid)
                os.kill(stopped, signal.SIGSTOP)
                os.kill(first.pid, signal.SIGKILL)  # its replacement waits for the fork server
                went = f"worker 1 (pid {second.pid}) ended with its fork server"
                await until(lambda: any(went in line for line in lines()))
                await until(lambda: len(ready()) == 2)  # from a new fork server
                group.cancel_scope.cancel()
    finally:
        if stopped > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        launcher.close()
    said = [line for line in lines() if line.startswith(("WARNING", "ERROR"))]
    assert sorted(said) == sorted(
        [
            f"WARNING worker 0 (pid {first.pid}) exited unexpectedly (killed by SIGKILL)",
            f"ERROR the fork server (pid {stopped}) did not answer a fork request within 0.3 s "
            "(stopped, or stuck?): killing it, with its 2 workers; a new one starts with the "
            "next worker",  # (it could not report the end of worker 0, being stopped)
            f"WARNING worker 1 (pid {second.pid}) ended with its fork server (killed by "
            "SIGKILL): the service killed its fork server, which did not answer",
        ]
    )
    assert (
        "INFO worker 2 was not started: the fork server did not answer; it starts from a new "
        "one" in lines()
    )


def test_a_worker_that_cannot_be_signalled_is_said_so_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A seccomp profile that blocks pidfd_send_signal: the timeouts, cancels and stops of
    # the workers do nothing, and the log says why (a worker that has ended is no error).
    errors = [OSError(errno.EPERM, os.strerror(errno.EPERM))] * 3 + [ProcessLookupError()]

    def pidfd_send_signal(pidfd: int, signum: int) -> None:
        raise errors.pop(0)

    monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal)
    fresh = RateLimitedLog(
        launched_process_module.logger, logging.WARNING, per_second=1, window=60.0
    )
    monkeypatch.setattr(launched_process_module, "_signal_failures", fresh, raising=False)
    ours, theirs = socket.socketpair()
    process = WorkerProcess(4242, os.pidfd_open(os.getpid()), ours)
    try:
        with caplog.at_level(logging.WARNING, logger="dispatcher.launcher"):
            process.terminate()
            process.kill()
            process.signal(signal.SIGRTMIN + 3)
            process.kill()  # (it has ended)
    finally:
        os.close(process.pidfd)
        ours.close()
        theirs.close()
    assert [r.getMessage() for r in caplog.records] == [
        "cannot signal worker pid 4242 (SIGTERM): pidfd_send_signal fails (Operation not "
        "permitted): its timeouts, cancels and stops do nothing until it is allowed"
    ]
    assert errors == []
