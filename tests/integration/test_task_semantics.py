"""Timeouts, cancel, on_duplicate, delay, bind, DispatcherExit, worker hooks, producers.

The service runs as a subprocess; everything is observed through what the tasks did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.publish import batch, submit_task
from support.service import Evidence, ServiceProcess, wait_until
from support.service import task_message as message

TASKS = "support.service_tasks."
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def events(evidence: Evidence, kind: str) -> list[dict[str, Any]]:
    return [r for r in evidence.records() if r.get("event") == kind]


def test_timeout_cancels_a_sleeping_task_and_the_worker_is_reused(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(
        channel, message("sleep_recording_cancel", evidence.path, 30, timeout=0.5, uuid="u-slow")
    )
    notify(channel, message("record", evidence.path, "next"))
    start, cancelled, after = evidence.wait_for(3, timeout=5)
    assert (start["event"], cancelled["event"]) == ("start", "cancelled")
    assert cancelled["time"] - start["time"] < 1.0
    assert after["args"] == ["next"]
    assert after["pid"] == start["pid"]  # the worker survived and took the next task
    service.wait_for_log(
        r"task support\.service_tasks\.sleep_recording_cancel \(uuid u-slow\) exceeded its timeout of 0\.5 s"
    )


def test_a_tasks_own_timeout_holds_for_a_message_that_sets_none(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """Published by name (SQL, another language, dispatcherctl submit), a message carries no
    timeout: the task's @task(timeout=0.5) holds all the same; the message's own wins."""
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(channel, message("sleep_under_its_own_timeout", evidence.path, 30, uuid="u-own"))
    notify(channel, message("sleep_under_its_own_timeout", evidence.path, 1, timeout=5))
    service.wait_for_log(
        r"task support\.service_tasks\.sleep_under_its_own_timeout \(uuid u-own\) exceeded its "
        r"timeout of 0\.5 s"
    )
    records = evidence.wait_for(4, timeout=10)
    assert [r["event"] for r in records] == ["start", "cancelled", "start", "end"]


@pytest.mark.parametrize("task", ["stubborn_sleep", "deaf_sleep"])
def test_a_task_that_resists_cancel_is_still_stopped(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    task: str,
) -> None:
    service_config["service"].update(cancel_grace=1, pool={"min_workers": 1, "max_workers": 1})
    service = start_service(service_config)
    notify(channel, message(task, evidence.path, 30, timeout=0.5, uuid="u-resisting"))
    notify(channel, message("record", evidence.path, "next"))
    records = evidence.wait_for(2, timeout=10)
    wait_until(lambda: any(r.get("args") == ["next"] for r in evidence.records()), timeout=10)
    start = records[0]
    after = next(r for r in evidence.records() if r.get("args") == ["next"])
    # Stopped by timeout (0.5 s) + cancel_grace (1 s) + at most 1 s more; then replaced.
    assert after["time"] - start["time"] < 0.5 + 1 + 1
    assert after["pid"] != start["pid"]
    assert not events(evidence, "end")
    service.wait_for_log(
        r"task support\.service_tasks\.\w+ \(uuid u-resisting\) killed with its worker"
    )
    if task == "stubborn_sleep":  # stopped by SIGTERM, it logs what it wrote until then
        service.wait_for_log(
            r"task output \[support\.service_tasks\.stubborn_sleep u-resisting\] "
            r"stubborn sleep of 30 s begins"
        )


def test_a_tasks_children_stopped_by_sigterm_leave_its_output_alone(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """Forked children inherit the worker's SIGTERM handler; it logged the task's output
    again from each of them."""
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(channel, message("prints_then_stops_its_children", evidence.path, uuid="u-kids"))
    evidence.wait_for(1)
    notify(channel, message("record", evidence.path, "next"))
    evidence.wait_for(2)  # the task has ended, and its output has been logged
    assert service.log.count("parent line, once") == 1, service.log


def test_alternating_timeouts_give_exactly_three(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    start_service(service_config)
    with batch():
        for n in range(6):
            if n % 2:
                submit_task(
                    TASKS + "sleep_recording_cancel", args=[str(evidence.path), 0.03, str(n)]
                )
            else:
                submit_task(
                    TASKS + "sleep_recording_cancel",
                    args=[str(evidence.path), 1.5, str(n)],
                    timeout=0.2,
                )
    wait_until(
        lambda: len(events(evidence, "cancelled")) + len(events(evidence, "end")) == 6, timeout=10
    )
    assert sorted(r["label"] for r in events(evidence, "cancelled")) == ["0", "2", "4"]
    assert sorted(r["label"] for r in events(evidence, "end")) == ["1", "3", "5"]


@pytest.mark.parametrize(("mode", "runs"), [("serial", 10), ("discard", 1), ("queue_one", 2)])
def test_on_duplicate(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    evidence: Evidence,
    mode: str,
    runs: int,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 3, "max_workers": 3}
    start_service(service_config)
    with batch():
        for _ in range(10):
            submit_task(
                TASKS + "sleep_then_record",
                args=[str(evidence.path), 0.2, "same"],
                on_duplicate=mode,
            )
    wait_until(lambda: len(events(evidence, "end")) >= runs, timeout=15)
    time.sleep(0.5)  # room for a wrong extra run to show up
    starts, ends = events(evidence, "start"), events(evidence, "end")
    assert (len(starts), len(ends)) == (runs, runs)
    ordered = sorted(starts + ends, key=lambda r: (r["time"], r["event"] == "start"))
    # One at a time: every start follows the previous run's end.
    assert [r["event"] for r in ordered] == ["start", "end"] * runs


def test_parallel_duplicates_overlap(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 3, "max_workers": 3}
    start_service(service_config)
    with batch():
        for _ in range(3):
            submit_task(TASKS + "sleep_then_record", args=[str(evidence.path), 0.5, "same"])
    wait_until(lambda: len(events(evidence, "end")) == 3, timeout=10)
    starts, ends = events(evidence, "start"), events(evidence, "end")
    assert max(r["time"] for r in starts) < min(r["time"] for r in ends)


def test_delayed_task_starts_no_earlier_than_its_delay(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    sent = time.time()
    submit_task(TASKS + "record", args=[str(evidence.path), "late"], delay=1.0)
    [record] = evidence.wait_for(1, timeout=5)
    assert record["time"] - sent >= 1.0


def test_bound_task_starts_a_follow_up_task(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["producers"] = {"control": {}}
    start_service(service_config)
    follow = {"task": TASKS + "record", "args": [str(evidence.path), "follow-up"]}
    notify(channel, message("follow_up", evidence.path, "run", follow, uuid="u-parent"))
    records = evidence.wait_for(2)
    control = next(r for r in records if r.get("event") == "control")
    assert control["uuid"] == "u-parent"
    assert control["reply"]["ack"]["task"] == TASKS + "record"
    child = next(r for r in records if r.get("args") == ["follow-up"])
    assert child["time"] >= control["time"] - 1


def test_a_bound_task_may_run_a_follow_up_of_several_megabytes(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    evidence: Evidence,
) -> None:
    """Its control event carries the whole message (up to 8 MiB): not taken for a task
    writing on the event pipe (a cap of 4 MiB on event lines once killed its worker)."""
    service_config["producers"] = {"control": {}}
    service = start_service(service_config)
    big = "é" * 1_000_000  # 6 MB as the event writes it (escaped), 2 MB in the message
    follow = {"task": TASKS + "record", "args": [str(evidence.path), big]}
    submit_task(TASKS + "follow_up", args=[str(evidence.path), "run", follow])  # chunked
    records = evidence.wait_for(2, timeout=30)
    assert any(r.get("args") == [big] for r in records)
    assert "on its event pipe" not in service.log


def test_run_command_needs_the_control_producer(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    notify(channel, message("follow_up", evidence.path, "run", {"task": TASKS + "record"}))
    [record] = evidence.wait_for(1)
    assert record["reply"]["error"].startswith(
        "the run command is disabled: add 'control: {}' under 'producers'"
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            {"control": "cancel", "control_data": {"all": True}},
            "task refused: control: a control command, not a task message",
        ),
        (
            {"task": TASKS + "record", "control": "set_log_level"},
            "task refused: control: a control command, not a task message",
        ),
        (
            {"__dispatcherd_chunk__": "v1", "message_id": "m", "total": 1, "index": 0},
            "task refused: __dispatcherd_chunk__: a chunk envelope, not a task message",
        ),
        (
            {"__dispatcher_signed__": "v1", "body": "{}"},
            "task refused: __dispatcher_signed__: a signed envelope, not a task message",
        ),
    ],
)
def test_the_run_command_takes_a_task_message_and_nothing_else(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    data: dict[str, Any],
    error: str,
) -> None:
    # run's data would otherwise be taken with no broker's checks: a cancel sent this way
    # would pass every allow_control and require_signed.
    service_config["producers"] = {"control": {}}
    start_service(service_config)
    notify(channel, message("sleep_recording_cancel", evidence.path, 30, uuid="u-running"))
    evidence.wait_for(1)
    notify(channel, message("follow_up", evidence.path, "run", data))
    wait_until(lambda: events(evidence, "control"), timeout=5)
    [control] = events(evidence, "control")
    assert control["reply"]["error"] == error
    assert events(evidence, "cancelled") == []


def test_bound_task_cancels_a_running_task(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    notify_uuid = "u-victim"
    start_service(service_config)
    notify(channel, message("sleep_recording_cancel", evidence.path, 30, uuid=notify_uuid))
    evidence.wait_for(1)
    notify(channel, message("follow_up", evidence.path, "cancel", {"uuid": notify_uuid}))
    wait_until(lambda: events(evidence, "cancelled") and events(evidence, "control"), timeout=5)
    [control] = events(evidence, "control")
    reply = control["reply"]
    assert [(key.split("-")[0], c["uuid"]) for key, c in reply.items()] == [("worker", notify_uuid)]


def test_dispatcher_exit_replaces_the_worker(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    start_service(service_config)
    notify(channel, message("exit_worker", evidence.path))
    notify(channel, message("record", evidence.path, "next"))
    exited, after = evidence.wait_for(2)
    assert exited["event"] == "exit"
    assert after["pid"] != exited["pid"]


def test_scheduled_task_runs_on_its_grid(
    start_service: StartService,
    service_config: dict[str, Any],
    evidence: Evidence,
) -> None:
    service_config["producers"] = {
        "scheduled": {TASKS + "record": {"schedule": 0.5, "args": [str(evidence.path), "tick"]}}
    }
    start_service(service_config)
    time.sleep(1.7)
    assert 2 <= len(evidence.records()) <= 4
    assert {tuple(r["args"]) for r in evidence.records()} == {("tick",)}


def test_on_start_task_runs_once(
    start_service: StartService,
    service_config: dict[str, Any],
    evidence: Evidence,
) -> None:
    service_config["producers"] = {
        "on_start": {TASKS + "record": {"args": [str(evidence.path), "hello"]}}
    }
    start_service(service_config)
    evidence.wait_for(1)
    time.sleep(0.5)
    assert [r["args"] for r in evidence.records()] == [["hello"]]


def test_all_five_worker_hooks_run(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    hooks = Evidence(tmp_path / "hooks.jsonl")
    service_config["worker"] = {
        "class": "support.service_hooks.RecordingWorker",
        "idle_timeout": 0.2,
    }
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config, env={"DISPATCHER_TEST_HOOKS_FILE": str(hooks.path)})
    notify(channel, message("record", evidence.path, "x"))
    evidence.wait_for(1)
    wait_until(lambda: any(r["hook"] == "on_idle" for r in hooks.records()), timeout=5)
    assert service.stop() == 0
    calls = [r["hook"] for r in hooks.records()]
    assert calls[:3] == ["on_start", "pre_task", "post_task"]
    assert "on_idle" in calls
    assert calls[-1] == "on_shutdown"
    assert next(r for r in hooks.records() if r["hook"] == "post_task")["outcome"] == "ok"


def test_a_failing_hook_does_not_kill_the_worker(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["worker"] = {"class": "support.service_hooks.FaultyWorker"}
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(channel, message("record", evidence.path, 1))
    notify(channel, message("record", evidence.path, 2))
    first, second = evidence.wait_for(2)
    assert first["pid"] == second["pid"]
    service.wait_for_log(r"worker hook pre_task raised; the worker carries on")


def test_a_stream_a_worker_hook_set_up_is_kept_for_every_task(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """The worker puts back what a task changes of its streams, not what its hooks set up."""
    service_config["worker"] = {"class": "support.service_hooks.WrappingWorker"}
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    for label in ("one", "two"):
        notify(channel, message("print_lines", evidence.path, label, 1))
    evidence.wait_for(2)
    for label in ("one", "two"):
        service.wait_for_log(rf"task output \[{TASKS}print_lines \S+\] \[hook\] {label} line 0")
    assert "closed or replaced" not in service.log


def test_workers_dying_before_they_are_ready_are_started_ever_more_slowly(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    """A hook that ends every worker at its start forked hundreds a second, for ever."""
    hooks, broken = Evidence(tmp_path / "hooks.jsonl"), tmp_path / "broken"
    broken.touch()
    service_config["worker"] = {"class": "support.service_hooks.DyingAtStartWorker"}
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    env = {
        "DISPATCHER_TEST_HOOKS_FILE": str(hooks.path),
        "DISPATCHER_TEST_BROKEN_FILE": str(broken),
    }
    service = start_service(service_config, wait=False, env=env)
    service.wait_for_log(
        r"worker \d+ \(pid \d+\) died before it was ready \((exit status \d+; )?2 workers in a "
        r"row; .*\): "
        r"starting the next one in 1\.0 s",
        timeout=20,
    )
    assert 2 <= len(hooks.records()) <= 3  # 0.5 s, then 1 s, then 2 s between them
    broken.unlink()
    notify(channel, message("record", evidence.path, "runs once a worker starts"))
    assert evidence.wait_for(1, timeout=20)[0]["args"] == ["runs once a worker starts"]
    assert "exited unexpectedly" not in service.log


def test_async_task_times_out_and_the_worker_runs_async_tasks_again(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    start_service(service_config)
    notify(channel, message("async_sleep", evidence.path, 30, timeout=0.5))
    notify(channel, message("async_record", evidence.path, "next"))
    start, after = evidence.wait_for(2, timeout=5)
    assert after["args"] == ["next"]
    assert after["pid"] == start["pid"]
    assert after["time"] - start["time"] < 1.5
    assert not events(evidence, "end")


@pytest.mark.parametrize("how", ["sleep", "busy", "gather", "wait_for"])
def test_an_async_task_sees_its_timeout_as_dispatcher_cancel_and_cleans_up(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    how: str,
) -> None:
    """``except DispatcherCancel:`` runs in an ``async def`` task, as in a plain one,
    whether its loop was waiting, or its code computing, when the timeout came."""
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(channel, message("async_cancellable", evidence.path, 30, how, timeout=0.5, uuid="u-a"))
    notify(channel, message("async_record", evidence.path, "next"))
    start, cancelled, after = evidence.wait_for(3, timeout=10)
    assert (start["event"], cancelled["event"]) == ("start", "cancelled"), cancelled
    subtasks = {"gather": ["a", "b"], "wait_for": ["w"]}
    assert cancelled["subtasks"] == subtasks.get(how, [])  # cancelled before the clean-up
    assert after["args"] == ["next"]
    assert after["pid"] == start["pid"]
    service.wait_for_log(r"task \S+async_cancellable \(uuid u-a\) exceeded its timeout of 0\.5 s")


def test_an_async_tasks_own_asyncio_timeout_stays_its_own(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(channel, message("async_cancellable", evidence.path, 30, "own timeout", uuid="u-own"))
    notify(channel, message("async_record", evidence.path, "next"))
    _start, own, after = evidence.wait_for(3, timeout=10)
    assert own["event"] == "own timeout"
    assert after["args"] == ["next"]
    service.wait_for_log(r"task \S+async_cancellable \(uuid u-own\) finished ok in")


def test_delayed_tasks_can_be_listed_and_cancelled_and_are_reported_at_shutdown(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, message("record", evidence.path, "cancelled", delay=1.5, uuid="u-delayed-1"))
    notify(channel, message("record", evidence.path, "abandoned", delay=60, uuid="u-delayed-2"))
    notify(channel, message("follow_up", evidence.path, "running", {}))
    [listing] = evidence.wait_for(1)
    assert sorted((key, t["where"], t["uuid"]) for key, t in listing["reply"].items()) == [
        ("delayed-0", "delayed", "u-delayed-1"),
        ("delayed-1", "delayed", "u-delayed-2"),
        (f"worker-{listing['worker']}", f"worker-{listing['worker']}", listing["uuid"]),
    ]
    notify(channel, message("follow_up", evidence.path, "cancel", {"uuid": "u-delayed-1"}))
    cancel = evidence.wait_for(2)[1]
    assert [(key, c["uuid"]) for key, c in cancel["reply"].items()] == [
        ("delayed-0", "u-delayed-1")
    ]
    time.sleep(2)
    assert [r for r in evidence.records() if r.get("args")] == []  # the delayed task never ran
    assert service.stop() == 0
    service.wait_for_log(
        r"shutting down with 1 delayed task abandoned: \S+\.record \(uuid u-delayed-2\)"
    )


def test_cancel_needs_a_filter(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    notify(channel, message("follow_up", evidence.path, "cancel", {}))
    [record] = evidence.wait_for(1)
    assert set(record["reply"]) == {"error"}
    assert record["reply"]["error"].startswith(
        "cancel needs a filter: uuid, task, args or kwargs (or all: true); "
        "service.control.cancel_without_filter is 'refuse' in "
    )
