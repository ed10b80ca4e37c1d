"""``dispatcher-standalone --reload``: edited task code runs, and no queued task is lost.

The service runs as a subprocess with one worker, on a task module written into a folder of
the test's own (on ``PYTHONPATH``); the test edits that file and watches the service's log
and what the tasks recorded (each record says which version of the code ran it).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.control import control_with_reply, entries
from support.service import TESTS, Evidence, ServiceProcess, children, wait_until

MODULE = "reloadable_tasks"

SOURCE = """
import json
import os
import time

from dispatcher.publish import task

VERSION = {version!r}


def _record(path, **fields):
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(json.dumps({{"version": VERSION, "pid": os.getpid(), **fields}}) + "\\n")


@task()
def record(path, label):
    _record(path, label=label)


@task()
def {hold}(path, label, gate):
    _record(path, label=label, event="start")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    _record(path, label=label, event="end")
"""


def source(version: str, hold: str = "hold") -> str:
    """The task module at *version*; *hold* names its second task."""
    return SOURCE.format(version=version, hold=hold)


@pytest.fixture
def reloading_service(
    tmp_path: Path, service_config: dict[str, Any]
) -> Iterator[Callable[[], ServiceProcess]]:
    """Start, with ``--reload``, a one-worker service on the module in ``tmp_path/code``."""
    started: list[ServiceProcess] = []

    def start() -> ServiceProcess:
        service_config["tasks"]["modules"] = [MODULE]
        service_config["service"]["pool"] = {
            "min_workers": 1,
            "max_workers": 1,
            "hold_ahead_below": 30.0,  # any hold under 30 s counts as quick
        }
        folder = tmp_path / "service"
        folder.mkdir()
        path = os.pathsep.join([str(tmp_path / "code"), str(TESTS)])
        service = ServiceProcess(service_config, folder, env={"PYTHONPATH": path})
        started.append(service.start("--reload"))
        service.wait_ready()
        service.wait_for_log(r"reload: watching .*code")
        return service

    yield start
    for service in started:
        service.kill_everything()


def by_label(evidence: Evidence) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in evidence.records():
        found.setdefault(record["label"], []).append(record)
    return found


@pytest.mark.timeout(120)
def test_edited_code_runs_and_queued_tasks_survive_the_reload(
    reloading_service: Callable[[], ServiceProcess],
    tmp_path: Path,
    evidence: Evidence,
    channel: str,
    configured: Settings,
    notify: Callable[[str, str], None],
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    module = code / f"{MODULE}.py"
    module.write_text(source("one"))
    service = reloading_service()
    first_gate, closed, opened = (tmp_path / name for name in ("first", "closed", "open"))
    opened.touch()

    def send(task: str, *args: Any, uuid: str | None = None) -> None:
        message = {"task": f"{MODULE}.{task}", "args": [str(evidence.path), *args]}
        notify(channel, json.dumps({**message, **({"uuid": uuid} if uuid else {})}))

    def where() -> dict[str, str]:
        [listing] = control_with_reply("running", expected_replies=1).replies
        return {t["uuid"]: t["where"] for t in entries(listing).values()}

    send("hold", "first", str(first_gate), uuid="u-first")
    send("hold", "blocker", str(closed), uuid="u-blocker")
    for n in range(3):
        send("record", f"queued-{n}", uuid=f"u-queued-{n}")
    wait_until(lambda: len(where()) == 5, timeout=20)
    # When "first" ends, the blocker starts and, "hold" being quick now, the next job is
    # sent to the same worker to hold ahead (only one: "record" has not run yet, so nothing
    # goes behind it).
    first_gate.touch()
    wait_until(lambda: "blocker" in by_label(evidence), timeout=20)
    assert where() == {
        "u-blocker": "worker-0",
        "u-queued-0": "worker-0 next",
        "u-queued-1": "queued",
        "u-queued-2": "queued",
    }

    module.write_text(source("two"))
    service.wait_for_log(rf"reloading: .*{MODULE}\.py changed", timeout=20)
    service.wait_for_log(r"reloaded: 1 workers restarted, 2 tasks registered", timeout=30)
    send("record", "after-edit")
    wait_until(lambda: "after-edit" in by_label(evidence), timeout=20)
    closed.touch()  # the blocker, on the old code, may end now
    labels = ["queued-0", "queued-1", "queued-2", "after-edit"]
    wait_until(lambda: all(label in by_label(evidence) for label in labels), timeout=20)
    wait_until(lambda: len(by_label(evidence)["blocker"]) == 2, timeout=20)
    runs = by_label(evidence)
    assert {label: [r["version"] for r in runs[label]] for label in labels} == {
        label: ["two"] for label in labels
    }
    assert [r["version"] for r in runs["blocker"]] == ["one", "one"]  # a start and an end

    # A syntax error: the service carries on with the code it has, and says why.
    module.write_text(source("three") + "\ndef broken(:\n")
    service.wait_for_log(
        rf"reload failed, the old workers carry on.*cannot import {MODULE}: SyntaxError",
        timeout=30,
    )
    send("record", "during-error")
    wait_until(lambda: "during-error" in by_label(evidence), timeout=20)
    assert by_label(evidence)["during-error"][0]["version"] == "two"
    assert service.process is not None
    assert service.process.poll() is None  # still running

    # Fixed: reloaded, with a task added and one removed.
    module.write_text(source("four", hold="wait_for_gate"))
    service.wait_for_log(r"reloaded: 1 workers restarted, 2 tasks registered", count=2, timeout=30)
    send("wait_for_gate", "added", str(opened))
    send("hold", "removed", str(opened))
    send("record", "fixed")
    wait_until(lambda: "fixed" in by_label(evidence), timeout=20)
    service.wait_for_log(rf"task '{MODULE}\.hold' is not registered", timeout=10)
    runs = by_label(evidence)
    assert [r["version"] for r in runs["fixed"]] == ["four"]
    assert [r["event"] for r in runs["added"]] == ["start", "end"]
    assert "removed" not in runs

    ran = Counter(r["label"] for r in evidence.records() if r.get("event") in (None, "start"))
    assert ran == Counter(
        ["first", "blocker", *labels, "during-error", "added", "fixed"]
    )  # each exactly once
    # The old fork servers went with their last workers: one fork server, one worker left.
    wait_until(lambda: len(children(service.pid)) == 2, timeout=20)
    assert service.stop(timeout=10) == 0


STEADY = """

@task()
def steady(path, label):
    _record(path, label=label)
    time.sleep(0.005)  # one interrupted after its record and run again would show twice
"""


@pytest.mark.timeout(120)
def test_every_job_runs_once_through_reloads_that_recall_held_jobs(
    reloading_service: Callable[[], ServiceProcess],
    tmp_path: Path,
    evidence: Evidence,
    channel: str,
    pg_conn: Any,
) -> None:
    """Reloads while a backlog of quick tasks drains: the busy worker holds jobs each time.

    Each recall races with the worker: the jobs it had started run to their end there, the
    others come back; none may run twice, or be lost.
    """
    code = tmp_path / "code"
    code.mkdir()
    module = code / f"{MODULE}.py"
    module.write_text(source("one") + STEADY)
    service = reloading_service()
    labels = [f"job-{n}" for n in range(500)]
    with pg_conn.transaction():  # delivered together, at commit: a backlog at once
        for label in labels:
            message = {"task": f"{MODULE}.steady", "args": [str(evidence.path), label]}
            pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))
    versions = ["two", "three", "four", "five", "six"]
    for number, version in enumerate(versions, 1):
        ran = 60 * number
        wait_until(lambda ran=ran: len(evidence.records()) >= ran, timeout=30)
        module.write_text(source(version) + STEADY)
        service.wait_for_log(r"reloaded: 1 workers restarted", count=number, timeout=30)
    wait_until(lambda: len(evidence.records()) >= len(labels), timeout=60)
    runs = Counter(record["label"] for record in evidence.records())
    assert {label: n for label, n in runs.items() if n != 1} == {}  # none ran twice
    assert sorted(runs) == sorted(labels)  # none lost
    ran_on = {record["version"] for record in evidence.records()}
    assert ran_on == {"one", *versions}
