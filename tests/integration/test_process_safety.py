"""No process outlives the service; deaths are seen at once; limits on memory and held work."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.service import (
    Evidence,
    ServiceProcess,
    alive,
    children,
    direct_children,
    wait_until,
    zombies,
)
from support.service import task_message as message

PROCESS_TASKS = "support.process_tasks."
RECORD = "support.service_tasks.record"
SLEEP = "support.service_tasks.sleep_then_record"
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def status(service: ServiceProcess) -> dict[str, Any]:
    """The service's ``status`` reply, asked with dispatcherctl over pg_notify."""
    config = str(service.config_path)
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", "status", "--json", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [reply] = json.loads(result.stdout)
    return reply  # type: ignore[no-any-return]


def with_process_tasks(config: dict[str, Any]) -> dict[str, Any]:
    config["tasks"]["modules"] = ["support.service_tasks", "support.process_tasks"]
    return config


def test_sigkill_of_the_main_process_leaves_no_process_after_one_second(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 3, "max_workers": 3}
    service = start_service(with_process_tasks(service_config))
    for n in range(3):
        task = PROCESS_TASKS + "spawn_child_and_sleep"
        notify(channel, message(task, evidence.path, 60, uuid=f"u-{n}"))
    started = evidence.wait_for(3)
    grandchildren = {record["child"] for record in started}
    everything = children(service.pid)
    # The fork server, three workers and the children their tasks started.
    assert grandchildren <= everything
    assert len(everything) >= 1 + 3 + 3

    service.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: not any(alive(pid) for pid in everything), timeout=1.0)
    assert time.monotonic() - killed_at <= 1.0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_children_a_task_moved_out_of_its_workers_group_end_with_the_service(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    stop: int,
) -> None:
    """A child in a process group or session of its own escapes its worker's group: the fork
    server, which adopts it once its worker is gone, kills it when the service stops."""
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(with_process_tasks(service_config))
    notify(channel, message(PROCESS_TASKS + "spawn_escaping_children", evidence.path))
    [started] = evidence.wait_for(1)
    assert all(alive(pid) for pid in started["children"])
    service.signal(stop)
    service.wait(timeout=10)
    wait_until(lambda: not any(alive(pid) for pid in started["children"]), timeout=2.0)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def fork_server_of(service_pid: int) -> int:
    """The fork server: the one live child of the service's main process."""
    [fork_server] = wait_until(lambda: direct_children(service_pid), timeout=10)
    return fork_server


def test_a_daemon_a_task_started_ends_with_the_service_after_its_fork_server_was_killed(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """Adopted by the fork server, then by the service's main process once the fork server is
    gone (killed, or replaced by the service when it stops answering): killed as the service
    stops. The workers that went with the fork server leave no zombie."""
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = start_service(with_process_tasks(service_config))
    notify(channel, message(PROCESS_TASKS + "spawn_daemon", evidence.path))
    [started] = evidence.wait_for(1)
    daemon = started["daemon"]
    try:
        fork_server = fork_server_of(service.pid)
        wait_until(lambda: parent_of(daemon) == fork_server, timeout=5)  # its parent exited
        os.kill(fork_server, signal.SIGKILL)
        service.wait_for_log(r"the fork server ended unexpectedly")
        wait_until(lambda: alive(daemon) and not zombies(service.pid), timeout=5)
        assert service.stop() == 0, service.log
        wait_until(lambda: not alive(daemon), timeout=2.0)
        assert "killed 1 process left behind: by tasks whose fork server had ended" in service.log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGKILL)


def test_children_the_service_inherited_across_exec_are_reaped_but_never_killed(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path
) -> None:
    """A container's entrypoint ``sidecar & exec dispatcher-standalone`` hands the sidecar to
    the service: it was killed as the service stopped, said to be left behind by tasks."""
    started = tmp_path / "sidecars"
    sidecar = f"sleep 300 & echo $! >> {started}"
    wrapper = ["sh", "-c", f'{sidecar}; {sidecar}; exec "$@"', "sh"]
    service = start_service(service_config, prefix=wrapper)
    kept, ended = (int(pid) for pid in started.read_text().split())
    try:
        assert parent_of(kept) == parent_of(ended) == service.pid
        os.kill(ended, signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{ended}"), timeout=5)  # reaped
        assert service.stop() == 0, service.log
        assert alive(kept)
        assert "left behind" not in service.log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(kept, signal.SIGKILL)


def pid_namespaces_work() -> bool:
    try:
        ran = subprocess.run([*IN_A_PID_NAMESPACE, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ran.returncode == 0


IN_A_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
"""The command's prefix that makes it PID 1 of a new PID namespace (as in a container)."""


@pytest.mark.skipif(not pid_namespaces_work(), reason="cannot create a PID namespace here")
def test_as_pid_1_the_service_reaps_every_orphan(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """PID 1 of a container adopts every orphan of the container: those of a shell that
    ``kubectl exec`` ran, the workers and the daemons of a fork server that was killed."""
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = start_service(with_process_tasks(service_config), prefix=IN_A_PID_NAMESPACE)
    [init] = direct_children(service.pid)  # (the service is the child of unshare)
    notify(channel, message(PROCESS_TASKS + "spawn_daemon", evidence.path))
    evidence.wait_for(1)
    os.kill(fork_server_of(init), signal.SIGKILL)
    for _ in range(3):  # a session that leaves a process behind as it ends
        enter = ["nsenter", "--target", str(init), "--pid", "sh", "-c", "sleep 0.2 & exit 0"]
        subprocess.run(enter, check=True, timeout=30)

    def sessions_left() -> set[int]:
        return {pid for pid in children(init) if _command(pid) == "sleep 0.2"}

    wait_until(lambda: not sessions_left() and not zombies(init), timeout=5)
    assert service.process is not None
    os.kill(init, signal.SIGTERM)
    assert service.wait() == 0, service.log


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_a_worker_whose_child_keeps_its_socket_is_seen_dead_at_once(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(with_process_tasks(service_config))
    notify(channel, message(PROCESS_TASKS + "fork_then_exit", evidence.path, uuid="u-forked"))
    [exiting] = evidence.wait_for(1)
    service.wait_for_log(
        r"ERROR .*died while running task support\.process_tasks\.fork_then_exit "
        r"\(uuid u-forked\): worker_lost",
        timeout=1.0,
    )
    # The task's child went with its worker, and a new worker runs the next task.
    wait_until(lambda: not alive(exiting["child"]), timeout=1.0)
    notify(channel, message(RECORD, evidence.path, "next"))
    _, after = evidence.wait_for(2)
    assert after["args"] == ["next"]
    assert after["pid"] != exiting["pid"]


def test_a_task_over_the_memory_limit_ends_as_memory_exceeded(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service_config["worker"] = {"max_memory": 200 * 1024 * 1024}
    service = start_service(with_process_tasks(service_config))
    notify(channel, message(PROCESS_TASKS + "hoard_memory", evidence.path, 4000, uuid="u-hog"))
    service.wait_for_log(
        r"WARNING .*over worker\.max_memory \(200 MiB\): killing it and its task "
        r"support\.process_tasks\.hoard_memory \(uuid u-hog\)"
    )
    service.wait_for_log(
        r"task support\.process_tasks\.hoard_memory \(uuid u-hog\) ended as memory_exceeded"
    )
    notify(channel, message(RECORD, evidence.path, "still serving"))
    records = evidence.wait_for(2)
    assert records[0]["event"] == "start"
    assert records[-1]["args"] == ["still serving"]
    assert not any(r.get("event") == "end" for r in records)
    reply = status(service)
    assert reply["finished"].get("memory_exceeded") == 1
    assert reply["pool"]["lost"] == 0


@pytest.mark.timeout(60)
def test_an_idle_worker_over_the_memory_limit_logs_its_last_tasks_output_first(
    start_service: StartService, service_config: dict[str, Any], notify: Notify, channel: str
) -> None:
    # The task ends ok, leaving its worker over the limit; the worker logs the task's output
    # after reporting its end (slowly here: see support.memory_kept_tasks). Stopped with
    # SIGTERM, not SIGKILL, it writes that output before it ends.
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service_config["worker"] = {"max_memory": 128 * 1024 * 1024}
    service_config["tasks"]["modules"] = ["support.service_tasks", "support.memory_kept_tasks"]
    service = start_service(service_config)
    kept = "support.memory_kept_tasks.keep_memory_and_print"
    notify(channel, message(kept, 200, 20, uuid="u-kept"))
    service.wait_for_log(rf"task output \[{kept} u-kept\] kept line 19$")
    service.wait_for_log(r"over worker\.max_memory \(128 MiB\): stopping it$")
    assert status(service)["finished"] == {"ok": 1}


def test_a_huge_time_pub_costs_no_worker_and_serial_duplicates_still_run(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    huge = "9" * 400
    for n in range(20):
        text = message(RECORD, evidence.path, "never", uuid=f"huge-{n}")
        notify(channel, text[:-1] + f', "time_pub": {huge}}}')
    for _ in range(2):
        notify(channel, message(SLEEP, evidence.path, 0.2, "same", on_duplicate="serial"))
    records = evidence.wait_for(4)
    assert [r["event"] for r in records] == ["start", "end", "start", "end"]
    reply = status(service)
    assert reply["pool"]["lost"] == 0
    assert reply["rejected"].get("internal_error", 0) == 0
    assert reply["rejected"]["invalid_message"] == 20


def test_held_work_is_bounded_and_refusals_are_counted(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service_config["service"]["limits"] = {"max_delayed": 3, "max_queued": 2, "max_blocked": 1}
    service = start_service(service_config)
    for n in range(5):
        notify(channel, message(RECORD, evidence.path, f"late-{n}", delay=60))
    service.wait_for_log(r"refused: service\.limits\.max_delayed \(3\) reached", count=1)
    # One running, two queued, the rest refused.
    notify(channel, message(SLEEP, evidence.path, 1, "busy"))
    evidence.wait_for(1)
    for n in range(4):
        notify(channel, message(RECORD, evidence.path, f"queued-{n}"))
    service.wait_for_log(r"refused: service\.limits\.max_queued \(2\) reached", count=1)
    reply = status(service)
    assert reply["delayed"] == 3
    assert reply["rejected"]["overloaded"] == 2 + 2
    records = evidence.wait_for(4)
    assert sorted(r["args"][0] for r in records if "args" in r) == ["queued-0", "queued-1"]


def test_blocked_duplicates_are_bounded(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["limits"] = {"max_blocked": 1}
    service = start_service(service_config)
    for _ in range(3):
        notify(channel, message(SLEEP, evidence.path, 0.5, "same", on_duplicate="serial"))
    service.wait_for_log(r"refused: service\.limits\.max_blocked \(1\) reached")
    records = evidence.wait_for(4)
    assert [r["event"] for r in records] == ["start", "end", "start", "end"]
    assert status(service)["rejected"]["overloaded"] == 1
