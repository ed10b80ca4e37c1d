"""Our publisher, control client and ``dispatcherctl`` against a real dispatcherd service.

dispatcherd 2026.5.27's own service (``dispatcherd --config ...``, from its environment)
runs :mod:`support.dispatcherd_tasks`, importing them by the names in the messages, as it
does. Our publisher and control client run in this process (:func:`our_clients`), our
``dispatcherctl`` as a subprocess; both with our config (version 1) on the same channels.
The replies of the real service are also checked against :mod:`support.dispatcherd_shapes`,
which the tests of our service hold it to.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.control import control_with_reply
from dispatcher.publish import submit_task
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES
from support import dispatcherd, dispatcherd_tasks_ours
from support import dispatcherd_shapes as shapes
from support.ctl_here import dispatcherctl
from support.dispatcherd import DispatcherdService
from support.service import Evidence, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90, func_only=True)]

StartDispatcherd = Callable[[dict[str, Any]], DispatcherdService]
TASKS = "support.dispatcherd_tasks."


@pytest.fixture
def their_service(
    start_dispatcherd: StartDispatcherd, pg_dsn: str, channel: str, other_channel: str
) -> DispatcherdService:
    """A dispatcherd service on this test's two channels, node id ``dd-<channel>``, with
    ``ControlProducer`` (for ``run``) and up to 2 workers."""
    document = dispatcherd.config(
        pg_dsn, [channel, other_channel], node_id=f"dd-{channel}", control_producer=True
    )
    return start_dispatcherd(document)


def replies(command: str, data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Our control client: dispatcherd services are not looked up, so say how many answer."""
    return control_with_reply(command, data, expected_replies=1, timeout=10).replies


def ctl(config: Path, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Our ``dispatcherctl``."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", command, *options, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ctl_json(config: Path, command: str, *options: str) -> list[dict[str, Any]]:
    """Our ``dispatcherctl --json``'s replies, run in this process (:func:`ctl` runs the
    command)."""
    done = dispatcherctl(config, command, *options, "--expected-replies", "1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    parsed: list[dict[str, Any]] = json.loads(done.stdout)
    return parsed


def by_task(records: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [record for record in records if record["task"] == task]


def event_of(evidence: Evidence, event: str, label: str) -> bool:
    return any(r.get("event") == event and r.get("label") == label for r in evidence.records())


def test_our_delay_and_submit_task_run_on_dispatcherd(
    their_service: DispatcherdService, our_clients: Settings, evidence: Evidence, other_channel: str
) -> None:
    path = str(evidence.path)
    delayed = dispatcherd_tasks_ours.record.delay(path, "delay", 1, k="v")
    by_name = submit_task(
        TASKS + "record",
        args=[path, "by name"],
        kwargs={"k": [1]},
        uuid="u-name",
        queue=other_channel,
        extra={"guid": "g-1"},
    )
    dispatcherd_tasks_ours.Adder.apply_async(args=[path, 2, 3])
    bound = dispatcherd_tasks_ours.bound.delay(path, "ours")
    submit_task(TASKS + "bound_by_message", args=[path], bind=True, uuid="u-bind")
    assert by_name.channel == other_channel
    assert by_name.message["guid"] == "g-1"

    records = evidence.wait_for(5)
    assert {r["runner"] for r in records} == {"dispatcherd"}
    assert sorted((r["args"], r["kwargs"]) for r in by_task(records, "record")) == [
        (["by name"], {"k": [1]}),
        (["delay", 1], {"k": "v"}),
    ]
    assert by_task(records, "Adder")[0]["sum"] == 5
    assert by_task(records, "bound")[0]["uuid"] == bound.uuid
    assert by_task(records, "bound_by_message")[0]["uuid"] == "u-bind"
    assert (
        delayed.channel == their_service.document["brokers"]["pg_notify"]["default_publish_channel"]
    )


def test_our_timeout_delay_and_on_duplicate_are_honoured_by_dispatcherd(
    their_service: DispatcherdService, our_clients: Settings, evidence: Evidence
) -> None:
    path = str(evidence.path)
    sleeper = TASKS + "sleeper"

    def events(label: str) -> list[str]:
        return [r["event"] for r in evidence.records() if r.get("label") == label]

    submit_task(sleeper, args=[path, 30, "timeout"], timeout=0.3)
    later = submit_task(TASKS + "record", args=[path, "later"], delay=0.5)
    wait_until(lambda: "interrupted" in events("timeout"), 15)
    [cancelled] = [r for r in evidence.records() if r.get("event") == "interrupted"]
    assert cancelled["exception"] == "DispatcherCancel"  # dispatcherd's, raised in the task
    wait_until(lambda: any(r.get("args") == ["later"] for r in evidence.records()), 10)

    # Each duplicate arrives while the first of its kind runs.
    for policy, seconds in (("discard", 0.5), ("serial", 0.2), ("queue_one", 0.5)):
        submit_task(sleeper, args=[path, seconds, policy], on_duplicate=policy)
        wait_until(lambda policy=policy: "start" in events(policy), 10)
        for _ in range(2):
            submit_task(sleeper, args=[path, seconds, policy], on_duplicate=policy)
    wait_until(
        lambda: events("serial").count("end") == 3 and events("queue_one").count("end") == 2, 20
    )
    wait_until(lambda: "end" in events("discard"), 10)
    submit_task(TASKS + "record", args=[path, "marker"])  # anything held back starts before it
    wait_until(lambda: any(r.get("args") == ["marker"] for r in evidence.records()), 10)
    assert events("timeout") == ["start", "interrupted"]
    assert events("discard") == ["start", "end"]
    assert events("serial") == ["start", "end"] * 3
    assert events("queue_one") == ["start", "end"] * 2
    [ran_later] = [r for r in evidence.records() if r.get("args") == ["later"]]
    assert ran_later["time"] - later.message["time_pub"] >= 0.5


def test_our_chunked_messages_are_reassembled_by_dispatcherd(
    their_service: DispatcherdService, our_clients: Settings, evidence: Evidence
) -> None:
    path = str(evidence.path)
    ascii_text = "x" * 9000
    wide_text = "é€😀" * 1500
    many = {f"key{i}": "v" * 50 for i in range(300)}
    sent = [
        submit_task(TASKS + "record", args=[path, ascii_text]),
        submit_task(TASKS + "record", args=[path, wide_text]),
        submit_task(TASKS + "record", args=[path], kwargs=many),
    ]
    # Around PostgreSQL's limit (a payload must be under 8000 bytes): whole, or in chunks.
    base = len(submit_task(TASKS + "record", args=[path, ""]).payloads[0])
    edge = [
        submit_task(TASKS + "record", args=[path, "e" * n])
        for n in range(8000 - base - 8, 8000 - base + 8)
    ]
    for submission in sent + edge:
        assert all(len(p.encode()) <= MAX_NOTIFY_PAYLOAD_BYTES for p in submission.payloads)
    assert all(len(s.payloads) > 1 for s in sent)
    assert {len(s.payloads) for s in edge} == {1, 2}

    records = evidence.wait_for(4 + len(edge))
    assert any(r["args"] == [ascii_text] for r in records)
    assert any(r["args"] == [wide_text] for r in records)
    assert any(r["kwargs"] == many for r in records)
    assert sorted(
        len(r["args"][0]) for r in records if r["args"] and set(r["args"][0]) == {"e"}
    ) == [len(s.message["args"][1]) for s in edge]
    [chunks] = replies("chunks")
    chunked = len(sent) + sum(len(s.payloads) > 1 for s in edge)
    assert shapes.check("chunks", chunks)["status"]["successful_assemblies"] == chunked


def test_our_control_message_and_its_reply_over_8_kB(
    their_service: DispatcherdService, our_clients: Settings, evidence: Evidence
) -> None:
    """Our client chunks the request; dispatcherd reassembles it, chunks its reply; we join it."""
    path, label = str(evidence.path), "L" * 9000
    submit_task(TASKS + "sleeper", args=[path, 60, label], uuid="u-large")
    wait_until(lambda: event_of(evidence, "start", label), 10)
    big_filter = {"args": [path, 60, label]}
    [running] = replies("running", big_filter)
    [(slot, message)] = shapes.check("running", running).items()
    assert slot.startswith("worker-")
    assert message["args"] == [path, 60, label]
    [cancelled] = replies("cancel", big_filter)
    assert [m["uuid"] for m in shapes.body(cancelled).values()] == ["u-large"]
    wait_until(lambda: event_of(evidence, "interrupted", label), 10)
    [chunks] = replies("chunks")
    assert chunks["status"]["successful_assemblies"] == 3  # the task, running, cancel


def test_dispatcherd_answers_in_the_shapes_our_service_is_held_to(
    their_service: DispatcherdService, our_clients: Settings, evidence: Evidence
) -> None:
    """A task in each place (worker, blocked, queued, delayed); every command's reply."""
    path = str(evidence.path)
    submit_task(TASKS + "sleeper", args=[path, 60, "busy"], on_duplicate="serial", uuid="u-first")
    wait_until(lambda: event_of(evidence, "start", "busy"), 15)
    submit_task(TASKS + "sleeper", args=[path, 60, "busy"], on_duplicate="serial", uuid="u-blocked")
    submit_task(TASKS + "sleeper", args=[path, 60, "other"], uuid="u-running")
    wait_until(lambda: event_of(evidence, "start", "other"), 15)  # on a second worker
    submit_task(TASKS + "record", args=[path, "queued"], uuid="u-queued")
    submit_task(TASKS + "record", args=[path, "delayed"], uuid="u-delayed", delay=300)
    expected = {
        "u-first": "worker",
        "u-running": "worker",
        "u-blocked": "blocked",
        "u-queued": "queued",
        "u-delayed": "delayed",
    }

    def where() -> dict[str, str]:
        [reply] = replies("running")
        return {m["uuid"]: slot.split("-")[0] for slot, m in shapes.check("running", reply).items()}

    wait_until(lambda: where() == expected, 10)
    for command in ("alive", "aio_tasks", "producers", "metrics", "main", "chunks", "status"):
        [reply] = replies(command)
        assert (
            reply["node_id"]
            == f"dd-{their_service.document['brokers']['pg_notify']['channels'][0]}"
        )
        shapes.check(command, reply)
    [workers] = replies("workers")
    busy = [w for w in shapes.check("workers", workers).values() if w["current_task"]]
    assert [w["status"] for w in busy] == ["ready", "ready"]  # running a task is not a status
    [level] = replies("set_log_level", {"level": "WARNING"})
    assert shapes.check("set_log_level", level)["level"] == "WARNING"
    [cancel_all] = replies("cancel", {})
    assert len(shapes.check("cancel", cancel_all)) == 5  # no filter: dispatcherd cancels all


def test_our_dispatcherctl_against_dispatcherd(
    their_service: DispatcherdService,
    our_clients: Settings,
    our_config_file: Path,
    evidence: Evidence,
    channel: str,
) -> None:
    path = str(evidence.path)
    node = f"dd-{channel}"
    submit_task(TASKS + "sleeper", args=[path, 60, "ctl"], uuid="u-ctl")
    wait_until(lambda: event_of(evidence, "start", "ctl"), 10)

    assert ctl_json(our_config_file, "alive") == [{"node_id": node}]
    for options in (
        (),
        ("--uuid", "u-ctl"),
        ("--task", TASKS + "sleeper"),
        ("--args", json.dumps([path, 60, "ctl"])),
    ):
        [running] = ctl_json(our_config_file, "running", *options)
        assert [m["uuid"] for m in shapes.check("running", running).values()] == ["u-ctl"], options
    for command, options in (
        ("workers", ()),
        ("status", ()),
        ("main", ()),
        ("aio_tasks", ("--limit", "1")),
        ("producers", ()),
        ("chunks", ()),
        ("metrics", ()),
        ("set_log_level", ("WARNING",)),
    ):
        [reply] = ctl_json(our_config_file, command, *options)
        assert reply["node_id"] == node
        shapes.check(command, reply)
    [ran] = ctl_json(our_config_file, "run", TASKS + "record", "--args", json.dumps([path, "run"]))
    assert ran["ack"]["task"] == TASKS + "record"
    [cancelled] = ctl_json(our_config_file, "cancel", "--uuid", "u-ctl")
    assert [m["uuid"] for m in shapes.check("cancel", cancelled).values()] == ["u-ctl"]
    wait_until(lambda: event_of(evidence, "interrupted", "ctl"), 10)
    wait_until(lambda: any(r.get("args") == ["run"] for r in evidence.records()), 10)

    # Human output: one block per service.
    shown = ctl(our_config_file, "workers", "--expected-replies", "1")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{node}:\n")
    # Without --expected-replies, ours looks services up in the database: dispatcherd's
    # connections bear no name, so it finds none, and says what to do.
    alone = ctl(our_config_file, "alive")
    assert alone.returncode == 1
    assert "--expected-replies" in alone.stderr
