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


@pytest.mark.timeout(60)
def test_a_job_held_ahead_is_listed_and_cancelled_without_running(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    configured: Settings,
) -> None:
    # Quick enough to be followed by a held job, even on a loaded machine: under a second.
    service_config["service"]["pool"] = {
        "min_workers": 1,
        "max_workers": 1,
        "hold_ahead_below": 1.0,
    }
    service = start_service(service_config)

    def send(*args: Any, **options: Any) -> None:
        notify(channel, message(*args, **options))

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
