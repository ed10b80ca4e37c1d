"""Tasks that raise what is not an ``Exception``, or hand back a generator: each is a failed
task (outcome ``error``, logged escaped), and the worker carries on.

The service runs as a subprocess; everything is observed through what the tasks did and what
the service logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from support.log_lines import FORGED, FORGED_SHOWN, assert_every_line_is_ours
from support.service import Evidence, ServiceProcess, wait_until
from support.service import task_message as message

UNRULY = "support.unruly_tasks."
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

ANSI_RED = "\x1b[31m"
TEXT = FORGED + ANSI_RED
"""What the exceptions say: a forged log line and a terminal escape, if written raw."""
TEXT_SHOWN = FORGED_SHOWN + "\\x1b[31m"


@pytest.fixture
def config(service_config: dict[str, Any]) -> dict[str, Any]:
    service_config["tasks"]["modules"] = ["support.service_tasks", "support.unruly_tasks"]
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    return service_config


def assert_log_is_ours(service: ServiceProcess) -> None:
    log = service.log
    assert "\x1b" not in log
    assert "worker_lost" not in log
    assert_every_line_is_ours(log)


@pytest.mark.parametrize("task", ["raise_base", "async_raise_base"])
def test_a_task_raising_a_base_exception_fails_and_its_worker_carries_on(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    task: str,
) -> None:
    service = start_service(config)
    kinds = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "Unruly"]
    for kind in kinds:
        notify(channel, message(UNRULY + task, evidence.path, kind, TEXT, uuid=f"u-{kind}"))
    notify(channel, message("record", evidence.path, "next"))
    records = evidence.wait_for(len(kinds) + 1)
    assert records[-1]["args"] == ["next"]
    assert len({r["pid"] for r in records}) == 1  # one worker ran them all
    for kind in kinds:
        service.wait_for_log(
            rf"ERROR dispatcher\.\w+: task support\.unruly_tasks\.{task} \(uuid u-{kind}\) "
            rf"failed: {kind}: " + re.escape(TEXT_SHOWN)
        )
    assert_log_is_ours(service)


def test_a_callback_raising_system_exit_is_logged_and_the_job_ends_ok(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(config, log_level="DEBUG")  # a job's end is logged at DEBUG
    path = str(evidence.path)
    callback = {"task": UNRULY + "raise_base", "args": [path, "SystemExit", TEXT]}
    errback = {"task": "support.service_tasks.record", "args": [path, "its errback"]}
    job = {
        "task": "support.service_tasks.record",
        "args": [path, "task"],
        "uuid": "u-callback",
        "callbacks": [{**callback, "errbacks": [errback]}],
    }
    notify(channel, json.dumps(job))
    notify(channel, message("record", evidence.path, "next"))
    records = evidence.wait_for(4)
    assert [r.get("args", [r.get("event")])[0] for r in records] == [
        "task",
        "raise",
        "its errback",
        "next",
    ]
    assert len({r["pid"] for r in records}) == 1
    service.wait_for_log(
        r"ERROR .*task support\.service_tasks\.record \(uuid u-callback\): callback "
        r"support\.unruly_tasks\.raise_base failed: SystemExit: " + re.escape(TEXT_SHOWN)
    )
    service.wait_for_log(r"\(uuid u-callback\) finished ok")
    assert_log_is_ours(service)


def test_what_ends_a_worker_outside_a_task_is_logged_escaped(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    config["worker"] = {"class": "support.service_hooks.ExitingWorker"}
    service = start_service(config, env={"DISPATCHER_TEST_EXIT_TEXT": TEXT})
    notify(channel, message("record", evidence.path, "x", uuid="u-hooked"))
    evidence.wait_for(1)
    service.wait_for_log(
        r"CRITICAL worker-\d+ dispatcher\.worker: worker \d+ ended on an unexpected error: "
        r"SystemExit: " + re.escape(TEXT_SHOWN)
    )
    service.wait_for_log(r"\(uuid u-hooked\): worker_lost")  # its end was never reported
    assert "\x1b" not in service.log
    assert_every_line_is_ours(service.log)


@pytest.mark.parametrize(
    ("task", "kind"),
    [
        ("returns_generator", "a generator"),
        ("returns_async_generator", "an async generator"),
        ("wrapped_generator", "a generator"),
    ],
)
def test_a_task_that_returns_a_generator_fails_saying_its_body_never_ran(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    task: str,
    kind: str,
) -> None:
    service = start_service(config)
    notify(channel, message(UNRULY + task, evidence.path, uuid="u-generator"))
    notify(channel, message("record", evidence.path, "next"))
    service.wait_for_log(
        rf"ERROR dispatcher\.\w+: task support\.unruly_tasks\.{task} \(uuid u-generator\) "
        rf"failed: GeneratorReturned: the task returned {kind}: its body never ran; "
    )
    wait_until(lambda: any(r.get("args") == ["next"] for r in evidence.records()), timeout=10)
    records = evidence.records()
    assert len({r["pid"] for r in records}) == 1  # the worker carried on
    assert not [r for r in records if r.get("event", "").endswith("body ran")]
    assert_log_is_ours(service)


@pytest.mark.parametrize(
    ("kind", "why"),
    [("garbage", r".*"), ("endless", r"a line of more than \d+ bytes")],
)
def test_a_task_writing_on_its_event_pipe_gets_its_worker_replaced(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    kind: str,
    why: str,
) -> None:
    """Garbage, or a line that never ends (which the service must not keep waiting for)."""
    service = start_service(config)
    garble = message(UNRULY + "writes_on_the_event_pipe", evidence.path, kind, uuid="u-garble")
    notify(channel, garble)
    [garbling] = evidence.wait_for(1)
    service.wait_for_log(
        rf"worker \d+ \(pid {garbling['pid']}\) wrote .* on its event pipe, not an event "
        rf"\({why}\): stopping it"
    )
    service.wait_for_log(
        r"died while running task \S+writes_on_the_event_pipe \(uuid u-garble\): worker_lost"
    )
    notify(channel, message("record", evidence.path, "next"))
    records = evidence.wait_for(2)
    assert records[-1]["args"] == ["next"]
    assert records[-1]["pid"] != garbling["pid"]
    assert "internal error" not in service.log


@pytest.mark.parametrize("kind", ["done", "done_twice"])
def test_a_task_reporting_the_end_of_another_job_gets_its_worker_replaced(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    kind: str,
) -> None:
    """A well-formed ``done`` for another uuid, written by the task: its own job does not end
    ``ok`` on it (nor does the one named), nor on a ``done`` of its own uuid after it."""
    service = start_service(config)
    forge = message(UNRULY + "writes_on_the_event_pipe", evidence.path, kind, uuid="u-forger")
    notify(channel, forge)
    [forging] = evidence.wait_for(1)
    service.wait_for_log(
        rf"worker \d+ \(pid {forging['pid']}\) reported the end of uuid zzz while it runs the "
        r"job of uuid u-forger: not an event of its own \(its task forged it\), stopping it"
    )
    service.wait_for_log(
        r"died while running task \S+writes_on_the_event_pipe \(uuid u-forger\): worker_lost"
    )
    notify(channel, message("record", evidence.path, "next"))
    records = evidence.wait_for(2)
    assert records[-1]["pid"] != forging["pid"]
    assert "internal error" not in service.log


def test_a_huge_exception_message_is_reported_cut_and_the_worker_carries_on(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """A task's error of 10 million characters is its error, cut, not a garbled worker."""
    service = start_service(config)
    notify(
        channel, message(UNRULY + "raises_a_huge_error", evidence.path, 10_000_000, uuid="u-big")
    )
    notify(channel, message("record", evidence.path, "next"))
    records = evidence.wait_for(2)
    assert records[-1]["args"] == ["next"]
    assert records[-1]["pid"] == records[0]["pid"]  # the worker carried on
    service.wait_for_log(r"task \S+raises_a_huge_error \(uuid u-big\) failed: ValueError: e+")
    assert "on its event pipe" not in service.log
    assert "internal error" not in service.log


@pytest.mark.parametrize(
    ("how", "what"),
    [
        ("closes", "the file descriptor its worker logs to"),
        ("reuses", "the file descriptor its worker logs to"),
        ("pipe", "the pipe its worker captures its output with"),
    ],
)
def test_a_task_closing_a_descriptor_of_its_workers_gets_its_worker_replaced(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    how: str,
    what: str,
) -> None:
    """Its log closed, every later line of the worker (its tasks' output, its own warnings)
    was lost without a word, or written into the file the task had put in the log's place;
    its output's pipe closed, the worker died (``worker_lost``) on an error of its own."""
    service = start_service(config)
    notify(channel, message(UNRULY + "takes_a_worker_fd", evidence.path, how, uuid="u-take"))
    [taking] = evidence.wait_for(1)
    service.wait_for_log(
        r"WARNING dispatcher\.\w+: task support\.unruly_tasks\.takes_a_worker_fd \(uuid "
        rf"u-take\) closed or replaced {what}: replacing worker \d+ \(pid {taking['pid']}\)"
    )
    service.wait_for_log(r"takes_a_worker_fd \(uuid u-take\) finished ok")
    notify(channel, message("record", evidence.path, "next"))
    records = evidence.wait_for(2)
    assert records[-1]["pid"] != taking["pid"]
    taken = evidence.path.with_name(evidence.path.name + ".taken")
    assert not taken.exists() or taken.read_text() == ""
    assert "internal error" not in service.log
    assert "worker_lost" not in service.log
    assert "CRITICAL" not in service.log


def test_a_task_closing_its_workers_socket_gets_a_line_that_says_so(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """Its job's end cannot be reported (``worker_lost``); the worker's last line said
    ``ended on an unexpected error: OSError: [Errno 9] Bad file descriptor``."""
    service = start_service(config)
    notify(channel, message(UNRULY + "takes_a_worker_fd", evidence.path, "socket", uuid="u-s"))
    [taking] = evidence.wait_for(1)
    service.wait_for_log(
        r"CRITICAL worker-\d+ dispatcher\.worker: worker \d+ ended: the socket it reports to "
        r"the service on was closed or replaced, by its task most likely \(OSError: "
    )
    service.wait_for_log(r"\(uuid u-s\): worker_lost")
    notify(channel, message("record", evidence.path, "next"))
    assert evidence.wait_for(2)[-1]["pid"] != taking["pid"]


def test_a_bound_tasks_control_command_too_large_to_send_is_refused_to_it(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """Sent, it was taken for a task writing on the event pipe: its worker was killed, its
    job lost (``worker_lost``), where a durable job failed so at every attempt."""
    service = start_service(config)
    notify(channel, message(UNRULY + "asks_too_much", evidence.path, 60, uuid="u-ask"))
    [asked] = evidence.wait_for(1, timeout=30)
    assert asked["reply"] == {
        "error": "the control command is 62914619 bytes of JSON, over the limit of 51380224 "
        "a worker may send its service"
    }
    service.wait_for_log(r"\(uuid u-ask\) finished ok")
    notify(channel, message("record", evidence.path, "next"))
    assert evidence.wait_for(2)[-1]["pid"] == asked["pid"]
    assert "on its event pipe" not in service.log
