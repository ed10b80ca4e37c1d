"""Jobs held ahead by a busy worker: listed where they are, cancelled without running.

The service runs as a subprocess with one worker; everything is observed through what the
tasks did and what ``dispatcherctl`` says.
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
from dispatcher.control import control_with_reply, entries
from support.service import Evidence, ServiceProcess, wait_until
from support.service import task_message as message

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def labelled(evidence: Evidence, label: str, event: str) -> bool:
    return any(r.get("label") == label and r.get("event") == event for r in evidence.records())


Send = Callable[..., None]


@pytest.fixture
def one_worker(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    configured: Settings,
) -> tuple[ServiceProcess, Send]:
    """A service with one worker, and a function that sends it a task message."""
    # Quick enough to be followed by held jobs, even on a loaded machine: under a second.
    service_config["service"]["pool"] = {
        "min_workers": 1,
        "max_workers": 1,
        "hold_ahead_below": 1.0,
    }
    service = start_service(service_config)

    def send(*args: Any, **options: Any) -> None:
        notify(channel, message(*args, **options))

    return service, send


@pytest.mark.timeout(60)
def test_a_job_held_ahead_is_listed_and_cancelled_without_running(
    one_worker: tuple[ServiceProcess, Send], evidence: Evidence
) -> None:
    service, send = one_worker
    send("sleep_recording_cancel", evidence.path, 0.5, "blocker")  # the others queue meanwhile
    for n in range(5):  # quick runs: the worker is then sent a job ahead of each one's end
        send("sleep_then_record", evidence.path, 0, f"quick-{n}")
    send("sleep_then_record", evidence.path, 3, "long", uuid="u-long")
    send("record", evidence.path, "held", uuid="u-held")
    wait_until(lambda: labelled(evidence, "long", "start"), timeout=15)
    [listing] = control_with_reply("running", expected_replies=1).replies
    assert [(t["uuid"], t["where"]) for t in entries(listing).values()] == [
        ("u-long", "worker-0"),
        ("u-held", "worker-0 next"),
    ]
    [cancelled] = control_with_reply("cancel", {"uuid": "u-held"}, expected_replies=1).replies
    assert [(t["uuid"], t["where"]) for t in entries(cancelled).values()] == [
        ("u-held", "worker-0 next")
    ]
    wait_until(lambda: labelled(evidence, "long", "end"), timeout=15)

    def finished() -> dict[str, int]:
        status = json.loads(ctl(service.config_path, "status", "--json").stdout)[0]
        return dict(status["finished"])

    # The long job's "ok" is counted once its worker reports it, after its "end" record.
    wait_until(lambda: finished() == {"ok": 7, "cancelled": 1}, timeout=10)
    assert not [r for r in evidence.records() if r.get("args") == ["held"]]


@pytest.mark.timeout(60)
def test_of_several_jobs_held_ahead_only_the_cancelled_one_is_skipped(
    one_worker: tuple[ServiceProcess, Send], evidence: Evidence
) -> None:
    _, send = one_worker
    send("sleep_recording_cancel", evidence.path, 0.5, "blocker")
    send("record", evidence.path, "warm-up")  # so that jobs of this task may be held too
    for n in range(5):
        send("sleep_then_record", evidence.path, 0, f"quick-{n}")
    send("sleep_then_record", evidence.path, 3, "long", uuid="u-long")
    after = [f"after-{n}" for n in range(6)]
    for label in after:
        send("record", evidence.path, label, uuid=f"u-{label}")
    wait_until(lambda: labelled(evidence, "long", "start"), timeout=15)
    [listing] = control_with_reply("running", expected_replies=1).replies
    places = {t["uuid"]: t["where"] for t in entries(listing).values()}
    held = [label for label in after if places.get(f"u-{label}") == "worker-0 next"]
    assert places["u-long"] == "worker-0"
    assert len(held) >= 3, places  # several held at once, sent in one write
    assert held == after[: len(held)]  # the first ones, in order
    skipped = held[1]
    [cancelled] = control_with_reply("cancel", {"uuid": f"u-{skipped}"}, expected_replies=1).replies
    assert [t["where"] for t in entries(cancelled).values()] == ["worker-0 next"]
    wanted = [label for label in after if label != skipped]

    def ran() -> list[str]:
        return [r["args"][0] for r in evidence.records() if r.get("args", [""])[0] in after]

    wait_until(lambda: len(ran()) >= len(wanted), timeout=20)
    assert ran() == wanted  # in order, the cancelled one never


@pytest.mark.timeout(60)
def test_a_worker_retiring_while_it_holds_jobs_never_runs_them_beside_its_replacement(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    configured: Settings,
) -> None:
    service_config["service"]["pool"] = {
        "min_workers": 1,
        "max_workers": 1,
        "hold_ahead_below": 1.0,
        "max_worker_lifetime": 0.5,
    }
    start_service(service_config)
    labels = [f"job-{n}" for n in range(40)]
    for label in labels:
        notify(channel, message("sleep_then_record", evidence.path, 0.05, label))

    def ended() -> list[dict[str, Any]]:
        return [r for r in evidence.records() if r.get("event") == "end"]

    wait_until(lambda: len(ended()) >= len(labels), timeout=40)
    runs = evidence.records()
    assert sorted(r["label"] for r in runs if r["event"] == "start") == sorted(labels)
    assert len({r["pid"] for r in runs}) >= 3  # it was replaced, more than once
    running = 0
    for record in sorted(runs, key=lambda r: (r["time"], r["event"] == "start")):
        running += 1 if record["event"] == "start" else -1
        assert running <= 1, "two tasks ran at once on a pool of one worker"


@pytest.mark.timeout(60)
def test_a_held_job_cancelled_before_its_worker_dies_is_not_run_elsewhere(
    one_worker: tuple[ServiceProcess, Send], evidence: Evidence
) -> None:
    service, send = one_worker
    send("sleep_recording_cancel", evidence.path, 0.5, "blocker")  # the others queue
    send("record", evidence.path, "warm-up")  # now known quick, as is sleep_then_exit below
    for _ in range(2):
        send("sleep_then_exit", evidence.path, 0, False)
    # Held behind the second one: the job that ends the worker, and three after it.
    send("sleep_then_exit", evidence.path, 1.5, uuid="u-exits")
    for n in range(3):
        send("record", evidence.path, f"held-{n}", uuid=f"u-held-{n}")
    wait_until(lambda: any(r.get("label") == "exits" for r in evidence.records()), timeout=15)
    [listing] = control_with_reply("running", expected_replies=1).replies
    places = {t["uuid"]: t["where"] for t in entries(listing).values()}
    assert places.get("u-held-1") == "worker-0 next", places
    [cancelled] = control_with_reply("cancel", {"uuid": "u-held-1"}, expected_replies=1).replies
    assert [t["where"] for t in entries(cancelled).values()] == ["worker-0 next"]
    [again] = control_with_reply("cancel", {"uuid": "u-held-1"}, expected_replies=1).replies
    assert entries(again) == {}  # cancelled once, not listed again

    def ran() -> list[str]:
        found = [r.get("args", [""])[0] for r in evidence.records()]
        return [str(label) for label in found if str(label).startswith("held-")]

    wait_until(lambda: len(ran()) >= 2, timeout=20)  # on the replacement worker
    service.wait_for_log(r"uuid u-held-1\) finished cancelled", timeout=10)
    assert ran() == ["held-0", "held-2"]
