"""The service keeps serving through database outages, dying workers and signals."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import Settings
from dispatcher.control import control_with_reply, entries
from dispatcher.schema import service_application_name
from support.postgres import unique_channel
from support.proxy import DatabaseProxy
from support.service import (
    Evidence,
    ServiceProcess,
    alive,
    children,
    standalone_command,
    wait_until,
    worker_pids,
)
from support.service import task_message as message

RECORD = "support.service_tasks.record"
SLEEP = "support.service_tasks.sleep_then_record"
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def assert_no_orphans(pids: set[int]) -> None:
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5)


def test_database_down_at_start_is_retried(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    pg_dsn: str,
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    service_config["brokers"]["pg_notify"]["conninfo"] = proxy.dsn
    service = start_service(service_config, wait=False, log_level="DEBUG")
    # Said once at WARNING; each attempt after it at DEBUG.
    service.wait_for_log(
        r"WARNING .*pg_notify connection to PostgreSQL at 127\.0\.0\.1.* failed .*; retrying in"
    )
    service.wait_for_log(
        r"DEBUG .*pg_notify connection to PostgreSQL at 127\.0\.0\.1.* failed .*; retrying in"
    )
    assert service.process is not None
    assert service.process.poll() is None
    proxy.up()
    try:
        service.wait_for_log(r"listening on channels", timeout=40)
        notify(channel, message(RECORD, evidence.path, "after the outage"))
        assert evidence.wait_for(1)[0]["args"] == ["after the outage"]
    finally:
        proxy.down()


def test_terminated_listener_connection_is_survived(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    pg_conn: psycopg.Connection[Any],
) -> None:
    service_config["service"]["node_id"] = channel
    service = start_service(service_config)
    [(terminated,)] = pg_conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (service_application_name(channel, [channel]),),
    ).fetchall()
    assert terminated == 1
    service.wait_for_log(r"reconnected to PostgreSQL", timeout=10)
    notify(channel, message(RECORD, evidence.path, "after"))
    assert evidence.wait_for(1)[0]["args"] == ["after"]


def test_self_check_finds_a_silently_dead_connection(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    pg_dsn: str,
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    pg_notify = service_config["brokers"]["pg_notify"]
    pg_notify.update(conninfo=proxy.dsn, self_check_interval=0.3, self_check_timeout=0.5)
    try:
        service = start_service(service_config, log_level="DEBUG")
        service.wait_for_log(r"self-check round trip", count=2)
        proxy.freeze()  # packets stop; no connection is closed
        service.wait_for_log(
            r"pg_notify connection to PostgreSQL at .* failed \(the self-check round trip took "
            r"longer than brokers\.pg_notify\.self_check_timeout \(0\.5 s\), and its NOTIFY "
            r"went on 1 s after the server was asked to cancel it\); retrying in 0\.1 s",
            timeout=10,
        )
        service.wait_for_log(r"reconnected to PostgreSQL", timeout=10)
        notify(channel, message(RECORD, evidence.path, "after the partition"))
        assert evidence.wait_for(1)[0]["args"] == ["after the partition"]
        assert "rejected" not in service.log  # self-checks never reach the intake
    finally:
        proxy.down()


def test_ctrl_c_in_a_terminal_stops_gracefully(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, message(SLEEP, evidence.path, 0.5, "finishing"))
    evidence.wait_for(1)
    processes = children(service.pid)
    os.killpg(os.getpgid(service.pid), signal.SIGINT)  # what a terminal sends to the whole group
    assert service.wait(20) == 0
    assert [r.get("event") for r in evidence.records()] == ["start", "end"]
    assert_no_orphans(processes)


def test_killed_busy_worker_is_replaced_within_a_second(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(channel, message(SLEEP, evidence.path, 30, "doomed", uuid="u-doomed"))
    [started] = evidence.wait_for(1)
    killed_at = time.time()
    os.kill(started["pid"], signal.SIGKILL)
    notify(channel, message(RECORD, evidence.path, "next"))
    _, replacement = evidence.wait_for(2)
    assert replacement["pid"] != started["pid"]
    assert replacement["time"] - killed_at < 1.0
    service.wait_for_log(
        r"ERROR .*died while running task support\.service_tasks\.sleep_then_record \(uuid u-doomed\): worker_lost"
    )


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_lets_the_running_task_finish_and_exits_0(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    number: signal.Signals,
) -> None:
    """SIGHUP (the terminal or ssh session of a service run by hand closed) as SIGTERM."""
    service = start_service(service_config)
    notify(channel, message(SLEEP, evidence.path, 1.0, "finishing"))
    evidence.wait_for(1)
    processes = children(service.pid)
    assert processes
    service.signal(number)
    assert service.wait(20) == 0
    assert f"received {number.name}: shutting down" in service.log
    assert [r.get("event") for r in evidence.records()] == ["start", "end"]
    assert_no_orphans(processes)
    assert "stopped" in service.log.splitlines()[-1]


def test_a_service_started_with_sighup_ignored_keeps_ignoring_it(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """``nohup dispatcher-standalone ...``: a closing terminal must not stop it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the service
    try:
        service = start_service(service_config)
    finally:
        signal.signal(signal.SIGHUP, previous)
    service.signal(signal.SIGHUP)
    notify(channel, message(RECORD, evidence.path, "still there"))
    assert evidence.wait_for(1)[0]["args"] == ["still there"]
    assert "received SIGHUP" not in service.log
    assert service.stop() == 0


def test_schedules_stop_when_the_shutdown_begins(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """While a running task is waited for, no tick runs (nor is refused with an error)."""
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    tick = {"schedule": 0.1, "args": [str(evidence.path), "tick"]}
    service_config["producers"] = {"scheduled": {RECORD: tick}}
    service = start_service(service_config)
    notify(channel, message(SLEEP, evidence.path, 1.5, "finishing"))
    wait_until(lambda: any(r.get("event") == "start" for r in evidence.records()), timeout=10)
    sent = time.time()
    service.signal(signal.SIGTERM)
    assert service.wait(20) == 0
    log = service.log
    stopping = log.index("received SIGTERM: shutting down")
    assert "refused" not in log[stopping:], log[stopping:]
    assert "ERROR" not in log[stopping:], log[stopping:]
    records = evidence.records()
    assert records[-1].get("event") == "end"  # the task running was waited for
    ticks = [r["time"] for r in records if r.get("args") == ["tick"]]
    assert not [t for t in ticks if t > sent + 0.5]  # the task ran on for about a second


def test_shutdown_grace_expires_and_queued_work_is_reported(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"].update(shutdown_grace=0.5, pool={"min_workers": 1, "max_workers": 1})
    service = start_service(service_config)
    notify(channel, message(SLEEP, evidence.path, 30, "stuck", uuid="u-stuck"))
    for n in range(3):
        notify(channel, message(RECORD, evidence.path, n, uuid=f"u-queued-{n}"))
    evidence.wait_for(1)

    def queued() -> list[str]:
        [reply] = control_with_reply("running", expected_replies=1, timeout=5).replies
        return [t["uuid"] for key, t in entries(reply).items() if key.startswith("queued-")]

    wait_until(lambda: len(queued()) == 3, timeout=10)  # every NOTIFY has been received
    processes = children(service.pid)
    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 5
    assert [r.get("event") for r in evidence.records()] == ["start"]
    service.wait_for_log(r"3 queued tasks abandoned: (\S+\.record \(uuid u-queued-\d\)(, )?){3}")
    service.wait_for_log(
        r"task support\.service_tasks\.sleep_then_record \(uuid u-stuck\) still running after"
    )
    assert_no_orphans(processes)


def test_second_signal_forces_exit(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["shutdown_grace"] = 60
    service = start_service(service_config)
    notify(channel, message(SLEEP, evidence.path, 60))
    evidence.wait_for(1)
    processes = children(service.pid)
    service.signal(signal.SIGTERM)
    service.wait_for_log(r"waiting up to 60 s for 1 running task to finish")
    service.signal(signal.SIGINT)
    assert service.wait(5) == 1
    assert_no_orphans(processes)


def test_bad_config_exits_2_with_the_error(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "dispatcher.yml"
    config.write_text("version: 1\nservice: {pool: {max_workers: 0}}\n")
    result = subprocess.run(
        [*standalone_command(), "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"dispatcher-standalone: {config}: service.pool.max_workers: must be at least 1\n"
    )


def test_task_module_that_fails_to_import_stops_the_service(
    start_service: StartService,
    service_config: dict[str, Any],
) -> None:
    service_config["tasks"]["modules"] = ["support.service_tasks", "support.no_such_module"]
    service = start_service(service_config, wait=False)
    assert service.wait(30) == 3
    assert "cannot import task module 'support.no_such_module'" in service.log
    assert "No module named 'support.no_such_module'" in service.log


def test_worker_replaced_after_max_tasks(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {
        "min_workers": 1,
        "max_workers": 1,
        "max_tasks_per_worker": 2,
    }
    start_service(service_config)
    for n in range(5):
        notify(channel, message(RECORD, evidence.path, n))
    records = evidence.wait_for(5)
    assert [r["args"][0] for r in records] == [0, 1, 2, 3, 4]
    pids = [r["pid"] for r in records]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


@pytest.mark.parametrize("ended_by", ["max_tasks", "the service's stop"])
def test_an_async_generator_a_task_kept_is_closed_as_its_worker_ends(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    tmp_path: Path,
    ended_by: str,
) -> None:
    """Its finally never ran: the worker left without closing its loop's async generators."""
    pool = {"min_workers": 1, "max_workers": 1}
    if ended_by == "max_tasks":
        pool["max_tasks_per_worker"] = 1
    service_config["service"]["pool"] = pool
    service_config["tasks"]["modules"] = ["support.loop_tasks"]
    service = start_service(service_config)
    record = tmp_path / "record"
    notify(channel, message("support.loop_tasks.keeps_an_async_generator", str(record)))
    if ended_by != "max_tasks":
        wait_until(lambda: record.exists() and "kept" in record.read_text(), timeout=10)
        assert service.stop() == 0, service.log
    wait_until(lambda: record.exists() and "finally" in record.read_text(), timeout=10)
    assert record.read_text().splitlines() == ["kept", "finally"]


def test_pool_grows_with_backlog_and_shrinks_when_idle(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 3, "scaledown_wait": 0.5}
    service = start_service(service_config)
    for n in range(3):
        notify(channel, message(SLEEP, evidence.path, 1.0, str(n)))
    records = evidence.wait_for(6, timeout=15)
    starts = [r for r in records if r["event"] == "start"]
    assert len({r["pid"] for r in starts}) == 3  # three workers ran them side by side
    assert {r["pid"] for r in starts} <= worker_pids(service.pid)
    # Back to one worker once idle for scaledown_wait.
    wait_until(lambda: len(worker_pids(service.pid)) == 1, timeout=10)


def test_unlistened_worker_channel_names_are_refused_by_config(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "dispatcher.yml"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "brokers": {"pg_notify": {"conninfo": "x", "channels": [unique_channel() + " x"]}},
            }
        )
    )
    result = subprocess.run(
        [*standalone_command(), "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "brokers.pg_notify.channels[0]: not a valid channel name" in result.stderr


def test_what_a_task_leaves_behind_is_adopted_and_reaped_by_the_service(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """A process orphaned by a task's own child goes to the fork server, which reaps it:
    under a service run as PID 1 (a container), it went to the service, which did not."""
    start_service(service_config)
    notify(channel, message("support.service_tasks.leaves_an_orphan", evidence.path, 1.0))
    [record] = evidence.wait_for(1)
    orphan, fork_server = record["orphan"], record["worker_parent"]

    def parent_of(pid: int) -> int | None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return None
        return int(status.split("PPid:")[1].split()[0])

    assert parent_of(orphan) in (fork_server, None)  # adopted (or already over and reaped)
    wait_until(lambda: not Path(f"/proc/{orphan}").exists(), timeout=10)  # reaped: no zombie
