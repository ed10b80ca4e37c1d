"""Control replies have dispatcherd's shapes: read here the way dispatcherd's clients read them.

The readers (``support.dispatcherd_readers``) do what dispatcherd's ``dispatcherctl`` and
demo, and AWX, do with the replies they get: AWX polls ``running`` until no task of a name
is left, looking at ``task`` in every value but ``node_id``'s; dispatcherd's tests take the
``worker-`` entry's ``uuid``; its demo prints ``done`` and ``stack`` of each ``aio_tasks``
entry.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from importlib import metadata
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from dispatcher.config import ServiceControl, load_settings
from dispatcher.control import entries
from dispatcher.control.result import parse_reply
from dispatcher.schema import MAX_MESSAGE_BYTES, load_schema
from dispatcher.server import control_walks
from dispatcher.server.allowlist import ControlAllowList
from dispatcher.server.control import ControlCommands, Reply
from dispatcher.server.control_messages import ControlMessages
from dispatcher.server.control_shapes import MAX_LISTED_BYTES, producers_reply
from dispatcher.server.control_state import STATUS_WAITING_LIMIT
from dispatcher.server.control_walks import WALK_SLICE
from dispatcher.server.jobs import Job, JobPick, Snapshot
from dispatcher.server.protocol import run_line
from dispatcher.server.rejection import Rejected
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.stats import ServiceStats
from dispatcher.server.view import ServiceView
from support.dispatcherd_readers import awx_still_running, demo_aio_tasks, running_worker_uuid
from support.paths import REPO

DISPATCHERD_STATUS_KEYS = {
    "running",
    "aio_tasks",
    "workers",
    "producers",
    "metrics",
    "main",
    "chunks",
}


def job(place: str, uuid: str, task: str = "app.t", **message: Any) -> tuple[str, Job]:
    """A job where the scheduler holds it."""
    body = json.dumps({"task": task, **message})
    return place, Job(uuid=uuid, task=task, line=run_line(body, "chan"))


class FakeService:
    """A ControlTarget holding a fixed set of jobs and two workers; it records cancels."""

    def __init__(self) -> None:
        self.jobs = [
            job("worker-0", "u-run", args=[1]),
            job("worker-0 next", "u-next", args=[2]),
            job("worker-1", "u-other", task="app.other", kwargs={"k": 1}),
            job("queued", "u-q1", args=[1]),
            job("queued", "u-q2", args=[3], where="from the message"),
            job("blocked", "u-b", args=[1]),
            job("delayed", "u-d", args=[1], delay=30),
        ]
        self.taken: list[JobPick] = []
        self.settled: list[tuple[str, str]] = []
        self.submitted: list[dict[str, Any]] = []

    def snapshot(self, limit: int | None) -> Snapshot:
        seen: Counter[str] = Counter()
        found = Snapshot(total=len(self.jobs))
        for where, held in self.jobs:
            seen[where] += 1
            if limit is None or where.startswith("worker-") or seen[where] <= limit:
                found.places.append((where, [held]))
        return found

    def take(self, pick: JobPick) -> list[tuple[str, list[Job]]]:
        self.taken.append(pick)
        return [(where, [held]) for where, held in self.jobs if pick(held)]

    def cancelled(self, where: str, held: Job) -> None:
        self.settled.append((where, held.uuid))

    def workers(self) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": n,
                "pid": 100 + n,
                "status": "ready",
                "state": "busy",
                "finished_count": n,
                "current_task": "app.t",
                "current_task_uuid": f"u-{n}",
                "active_cancel": False,
                "age": 1.5,
                "held_ahead": [],
                "rss_bytes": 1 << 20,
            }
            for n in (0, 1)
        ]

    def counts(self) -> dict[str, Any]:
        places = [where for where, _ in self.jobs]
        return {
            "queued": places.count("queued"),
            "blocked": places.count("blocked"),
            "delayed": places.count("delayed"),
            "workers": {"count": 2, "min": 1, "max": 4},
        }

    def pool(self) -> dict[str, Any]:
        return {
            "next_worker_id": 2,
            "worker_ct": 2,
            "running_ct": 2,
            "active_task_ct": 5,
            "usage": {"count": 2, "top5": {2: "blocked", 1: "blocked"}, "near_worker_ct": {}},
        }

    def chunks(self) -> dict[str, Any]:
        return {"status": {"active_messages": 0}, "partials": {}}

    def aio_tasks(self, limit: int) -> dict[str, Any]:
        return {"main": {"done": False, "stack": f"{limit} frames"}}

    def signatures(self) -> dict[str, Any]:
        return {"keys": []}

    def metrics_endpoint(self) -> dict[str, Any]:
        return {"enabled": False}

    def submit(self, message: dict[str, Any]) -> str:
        if message.get("task") == "refused":
            raise Rejected("unknown_task", "no task named 'refused'")
        self.submitted.append(message)
        return str(message.get("uuid") or "u-new")


@pytest.fixture
def service() -> FakeService:
    return FakeService()


def commands(target: FakeService, **config: Any) -> ControlCommands:
    settings = load_settings({"version": 1, **config})
    stats = ServiceStats()
    stats.finished.update({"ok": 3, "error": 1, "cancelled": 2, "timeout": 1})
    stats.delivered["pg_notify"] = 5
    return ControlCommands(target, settings, stats)


def ask(
    target: FakeService, command: str, data: dict[str, Any] | None = None, **config: Any
) -> list[dict[str, Any]]:
    """One service's reply as a client gets it: through JSON, with ``node_id``, in a list."""
    messages = ControlMessages(
        commands(target, **config),
        ControlAllowList(load_settings({"version": 1}).brokers),
        ServiceStats(),
        "node-a",
    )
    message = {"control": command, "control_data": data or {}}
    answer = anyio.run(messages.answer, message, "chan", None)
    return [json.loads(json.dumps(answer))]


# -- running and cancel --------------------------------------------------------------------


def test_running_has_a_key_per_task_named_after_where_it_is(service: FakeService) -> None:
    [reply] = ask(service, "running")
    assert list(reply) == [
        "worker-0",
        "queued-0",
        "worker-1",
        "queued-1",
        "queued-2",
        "blocked-0",
        "delayed-0",
        "node_id",
    ]
    assert reply["worker-0"] == {"task": "app.t", "args": [1], "uuid": "u-run", "where": "worker-0"}
    assert reply["queued-0"]["where"] == "worker-0 next"  # held ahead: not started
    assert reply["queued-2"]["where"] == "queued"  # ours replaces the message's own `where`
    assert reply["delayed-0"]["delay"] == 30
    assert list(entries(reply)) == [key for key in reply if key != "node_id"]


def test_running_reads_as_dispatcherd_clients_and_awx_read_it(service: FakeService) -> None:
    replies = ask(service, "running")
    assert len(awx_still_running(replies, "app.t")) == 6
    assert awx_still_running(replies, "app.gone") == []
    assert running_worker_uuid(replies) == "u-run"
    assert running_worker_uuid(ask(service, "running", {"uuid": "u-other"})) == "u-other"
    service.jobs = []
    assert ask(service, "running") == [{"node_id": "node-a"}]
    assert awx_still_running(ask(service, "running"), "app.t") == []


@pytest.mark.parametrize(
    ("data", "uuids"),
    [
        ({"uuid": "u-q1"}, ["u-q1"]),
        ({"task": "app.other"}, ["u-other"]),
        ({"args": [1]}, ["u-run", "u-q1", "u-b", "u-d"]),
        ({"args": [1], "uuid": "u-b"}, ["u-b"]),
        ({"kwargs": {"k": 1}}, ["u-other"]),
        ({"kwargs": {"k": 2}}, []),
        ({"uuid": "", "task": None, "args": [], "kwargs": {}}, None),  # empty: no filter
    ],
)
def test_running_filters_as_dispatcherd_does(
    service: FakeService, data: dict[str, Any], uuids: list[str] | None
) -> None:
    [reply] = ask(service, "running", data)
    found = [task["uuid"] for task in entries(reply).values()]
    assert found == (uuids if uuids is not None else [held.uuid for _, held in service.jobs])


def test_cancel_without_a_filter_is_refused_by_default(service: FakeService) -> None:
    for data in ({}, {"uuid": "", "args": []}):
        [reply] = ask(service, "cancel", data)
        assert reply["error"].startswith("cancel needs a filter: uuid, task, args or kwargs")
        assert "service.control.cancel_without_filter is 'refuse'" in reply["error"]
    assert service.taken == []


def test_cancel_without_a_filter_cancels_all_when_configured(service: FakeService) -> None:
    config = {"service": {"control": {"cancel_without_filter": "all"}}}
    [reply] = ask(service, "cancel", {}, **config)
    assert service.taken == [JobPick()]
    assert len(entries(reply)) == len(service.jobs)
    assert running_worker_uuid([reply]) == "u-run"


def test_cancel_all_explicitly_and_not_with_a_filter(service: FakeService) -> None:
    [reply] = ask(service, "cancel", {"all": True})
    assert service.taken == [JobPick()]
    assert "worker-1" in reply
    [mixed] = ask(service, "cancel", {"all": True, "uuid": "u-run"})
    assert mixed["error"] == "cancel: give either all or a filter, not both"


def test_cancel_by_uuid_and_by_args(service: FakeService) -> None:
    [reply] = ask(service, "cancel", {"uuid": "u-d"})
    assert reply == {
        "delayed-0": {"task": "app.t", "args": [1], "delay": 30, "uuid": "u-d", "where": "delayed"},
        "node_id": "node-a",
    }
    service.taken.clear()
    [by_args] = ask(service, "cancel", {"args": [3]})
    assert service.taken == [JobPick(uuids=frozenset({"u-q2"}))]
    assert [t["uuid"] for t in entries(by_args).values()] == ["u-q2"]


def test_a_cancel_cut_short_once_it_took_its_jobs_settles_them_all_and_replies(
    service: FakeService,
) -> None:
    service.jobs = [job("queued", f"u-{n}") for n in range(3 * WALK_SLICE)]
    running = commands(service)
    replies: list[Reply] = []

    async def cut_short() -> None:
        async with anyio.create_task_group() as tasks:

            async def cancel() -> None:
                replies.append(await running.handle("cancel", {"task": "app.t"}))

            tasks.start_soon(cancel)
            while not service.settled:  # taken, and settling its first slice
                await anyio.sleep(0)
            tasks.cancel_scope.cancel()  # (the service stopping, say)

    anyio.run(cut_short)
    assert len(service.settled) == len(service.jobs)
    assert [len(reply) for reply in replies] == [len(service.jobs)]


def test_a_walk_lets_the_service_run_by_the_clock_however_long_each_job_takes(
    service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not every so many jobs: reading 1,000 messages held the event loop for 25 ms."""
    queued = [job("queued", f"u-{n}", args=[n])[1] for n in range(300)]
    backlog = Snapshot(total=len(queued), places=[("queued", queued)])
    monkeypatch.setattr(service, "snapshot", lambda limit: backlog)
    read = control_walks.describe

    def slow_read(held: Job, where: str) -> dict[str, Any]:
        time.sleep(0.001)  # a large message, a loaded machine
        return read(held, where)

    monkeypatch.setattr(control_walks, "describe", slow_read)
    running = commands(service)
    turns = 0
    replies: list[Reply] = []

    async def walk_and_count_turns() -> None:
        nonlocal turns
        async with anyio.create_task_group() as tasks:

            async def walk() -> None:
                replies.append(await running.handle("running", {"args": ["none"]}))
                tasks.cancel_scope.cancel()

            tasks.start_soon(walk)
            while True:
                await anyio.sleep(0)
                turns += 1

    anyio.run(walk_and_count_turns)
    assert replies == [{}]
    # 300 ms of reading: a pause every 5 ms of it (WALK_TURN), some 50 in all, each letting
    # the counter run (many times, while the walk rests); a pause every 1,000 jobs, none.
    assert turns >= 15


def test_filters_of_the_wrong_type_or_unknown_get_an_error_naming_them(
    service: FakeService,
) -> None:
    [reply] = ask(service, "running", {"args": "1"})
    assert reply["error"].startswith("invalid control_data for running: control_data.args: ")
    [unknown] = ask(service, "cancel", {"task_ids": ["u"]})
    assert "control_data.task_ids: unknown key" in unknown["error"]


# -- the other commands --------------------------------------------------------------------


def test_workers_main_and_aio_tasks(service: FakeService) -> None:
    [workers] = ask(service, "workers")
    assert sorted(entries(workers)) == ["worker-0", "worker-1"]
    for key, worker in entries(workers).items():
        assert key == f"worker-{worker['worker_id']}"
        assert {"pid", "status", "finished_count", "current_task", "current_task_uuid"} <= set(
            worker
        )
        assert {"active_cancel", "age"} <= set(worker)
    [main] = ask(service, "main")
    assert (main["received_count"], main["control_count"]) == (0, 0)
    assert main["pool"] == {
        "finished_count": 4,
        "canceled_count": 3,
        "retirement_count": 0,
        "next_worker_id": 2,
        "worker_ct": 2,
        "running_ct": 2,
        "active_task_ct": 5,
        "usage": {"count": 2, "top5": {"2": "blocked", "1": "blocked"}, "near_worker_ct": {}},
    }
    assert demo_aio_tasks(ask(service, "aio_tasks")) == ["main done=False\n6 frames"]
    assert demo_aio_tasks(ask(service, "aio_tasks", {"limit": 0})) == ["main done=False\n0 frames"]


def test_status_holds_every_read_only_reply_and_our_counters(service: FakeService) -> None:
    [status] = ask(service, "status")
    assert set(status) >= DISPATCHERD_STATUS_KEYS
    for name in DISPATCHERD_STATUS_KEYS - {"producers", "main"}:  # those hold the uptime
        [alone] = ask(service, name)
        alone.pop("node_id")
        assert status[name] == alone, name
    assert set(status["main"]) == set(ask(service, "main")[0]) - {"node_id"}
    assert awx_still_running([{**status["running"], "node_id": "n"}], "app.other") != []
    assert status["pool"] == {"count": 2, "min": 1, "max": 4, "started": 0, "lost": 0}
    assert status["finished"] == {"ok": 3, "error": 1, "cancelled": 2, "timeout": 1}
    assert status["running_omitted"] == 0


def test_status_names_the_version_the_service_runs_first(service: FakeService) -> None:
    # An operator replacing the services of a fleet confirms which run the new code.
    [status] = ask(service, "status")
    assert next(iter(status)) == "version"
    assert status["version"] == metadata.version("dispatcher-server")
    # The client takes it as any reply (replies are checked against control-reply.schema.json).
    assert parse_reply(json.dumps(status)) == status


def test_status_lists_only_the_tasks_on_workers_behind_a_long_queue(
    service: FakeService,
) -> None:
    service.jobs += [job("queued", f"u-{n}") for n in range(STATUS_WAITING_LIMIT)]
    [status] = ask(service, "status")
    assert sorted(entries(status["running"])) == ["queued-0", "worker-0", "worker-1"]
    assert status["running"]["queued-0"]["where"] == "worker-0 next"
    assert status["running_omitted"] == STATUS_WAITING_LIMIT + 4
    [running] = ask(service, "running")
    assert len(entries(running)) == len(service.jobs)


@pytest.mark.parametrize(("command", "data"), [("running", {}), ("cancel", {"task": "app.big"})])
def test_a_listing_too_large_for_one_reply_lists_what_fits_and_counts_the_rest(
    service: FakeService, command: str, data: dict[str, Any]
) -> None:
    """10,000 tasks of 1 KiB each once made a reply over the limit, which no client took."""
    blob = "x" * 1024
    service.jobs = [
        job("queued", f"u-{n}", task="app.big", kwargs={"b": blob}) for n in range(10_000)
    ]
    [reply] = ask(service, command, data)
    listed = entries(reply)
    assert 0 < len(listed) < 10_000
    assert reply["omitted"] == 10_000 - len(listed)
    assert list(listed) == [f"queued-{n}" for n in range(len(listed))]  # the first ones
    size = len(json.dumps(reply))
    assert MAX_LISTED_BYTES * 0.9 < size < MAX_MESSAGE_BYTES
    if command == "cancel":
        assert service.taken == [JobPick(task="app.big")]  # every one, listed or not
        assert len(service.settled) == 10_000


def test_a_listing_that_fits_says_nothing_of_omitted_tasks(service: FakeService) -> None:
    """(dispatcherd's readers take every value of the reply but ``node_id`` for a task.)"""
    for command, data in (("running", {}), ("cancel", {"task": "app.t"})):
        [reply] = ask(service, command, data)
        assert "omitted" not in reply
        awx_still_running([reply], "app.t")


def test_status_lists_running_tasks_up_to_the_same_size(service: FakeService) -> None:
    blob = "x" * (1 << 20)
    service.jobs = [job(f"worker-{n}", f"u-{n}", kwargs={"b": blob}) for n in range(8)]
    [status] = ask(service, "status")
    assert 0 < len(entries(status["running"])) < 8
    assert status["running_omitted"] == 8 - len(entries(status["running"]))
    assert len(json.dumps(status)) < MAX_MESSAGE_BYTES


def test_producers_are_named_as_dispatcherd_names_them(service: FakeService) -> None:
    config = {
        "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["c"]}},
        "producers": {"scheduled": {"app.t": {"schedule": 60}}, "control": {}},
    }
    [reply] = ask(service, "producers", **config)
    assert sorted(entries(reply)) == [
        "control-producer",
        "pg_notify-producer",
        "scheduled-producer",
    ]
    assert reply["pg_notify-producer"]["recycle_count"] == 0
    assert reply["pg_notify-producer"]["produced_count"] == 5
    assert reply["pg_notify-producer"]["broker_self_check"] == {
        "enabled": True,
        "success_count": 0,
        "average_time_seconds": None,  # none yet, as dispatcherd says it
        "max_time_seconds": None,
    }
    stats = ServiceStats()
    stats.self_checks, stats.self_check_seconds, stats.self_check_max_seconds = 2, 0.5, 0.3
    shaped = producers_reply(load_settings({"version": 1, **config}), stats, 1.0)
    check = shaped["pg_notify-producer"]["broker_self_check"]
    assert (check["success_count"], check["average_time_seconds"]) == (2, 0.25)
    assert check["max_time_seconds"] == 0.3
    assert reply["scheduled-producer"]["produced_count"] is None
    assert reply["scheduled-producer"]["schedules"] == {"app.t": {"schedule": 60}}
    assert all("uptime_seconds" in p for p in entries(reply).values())


def test_run_acknowledges_with_the_message(service: FakeService) -> None:
    [disabled] = ask(service, "run", {"task": "app.t"})
    assert disabled["error"].startswith("the run command is disabled")
    enabled = {"producers": {"control": {}}}
    [reply] = ask(service, "run", {"task": "app.t", "args": [1]}, **enabled)
    assert reply == {
        "ack": {"task": "app.t", "args": [1], "uuid": "u-new"},
        "uuid": "u-new",
        "node_id": "node-a",
    }
    [refused] = ask(service, "run", {"task": "refused"}, **enabled)
    assert refused["error"] == "task refused: no task named 'refused'"


@pytest.fixture
def restored_level() -> Iterator[None]:
    logger = logging.getLogger("dispatcher")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("restored_level")
@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", "DEBUG"),
        (" Warn ", "WARNING"),
        (10, "DEBUG"),
        (15, "Level 15"),
        ("fatal", "CRITICAL"),
    ],
)
def test_set_log_level_takes_names_in_any_case_and_numbers(
    service: FakeService, level: str | int, expected: str
) -> None:
    [reply] = ask(service, "set_log_level", {"level": level})
    assert (reply["logger"], reply["level"]) == ("dispatcher", expected)
    assert "previous_level" in reply


@pytest.mark.usefixtures("restored_level")
@pytest.mark.parametrize(
    ("level", "said"),
    [
        ("loud", "control_data.level: unknown log level 'loud' (expected a number or one of "),
        (True, "control_data.level: expected string or integer, got boolean True"),
        (-1, "control_data.level: "),
    ],
)
def test_set_log_level_errors_name_the_field(
    service: FakeService, level: object, said: str
) -> None:
    [reply] = ask(service, "set_log_level", {"level": level})
    assert reply["error"].startswith("invalid control_data for set_log_level: ")
    assert said in reply["error"]


def test_unknown_command_lists_every_command(service: FakeService) -> None:
    [reply] = ask(service, "bogus")
    assert reply["error"] == (
        "unknown command 'bogus' (commands: aio_tasks, alive, cancel, chunks, main, metrics, "
        "producers, run, running, set_log_level, status, workers)"
    )


def test_the_cancel_setting_defaults_to_refuse_in_schema_and_settings() -> None:
    node: Mapping[str, Any] = load_schema("config")["properties"]["service"]
    prop = node["properties"]["control"]["properties"]["cancel_without_filter"]
    assert prop["default"] == ServiceControl().cancel_without_filter == "refuse"
    assert load_settings({"version": 1}).service.control == ServiceControl()


# -- the docs ------------------------------------------------------------------------------


def documented_words(command: str) -> set[str]:
    """The names written in code spans in the row of *command* of docs/control.md's table."""
    text = (REPO / "docs" / "control.md").read_text(encoding="utf-8")
    [row] = [line for line in text.splitlines() if line.startswith(f"| `{command}` |")]
    return {word for span in re.findall(r"`([^`]+)`", row) for word in re.findall(r"\w+", span)}


def nested_keys(value: Any) -> set[str]:
    """Every key of the dicts in *value*, at any depth (through lists too)."""
    if isinstance(value, dict):
        return set(value) | {key for inner in value.values() for key in nested_keys(inner)}
    if isinstance(value, list):
        return {key for inner in value for key in nested_keys(inner)}
    return set()


def test_every_key_of_status_and_metrics_is_documented(service: FakeService) -> None:
    settings = load_settings(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": "dbname=app", "channels": ["c"]},
                "pg_queue": {"queues": ["q"]},
            },
        }
    )
    stats = ServiceStats()
    stats.broker("pg_notify").failed("connection lost")
    stats.task_failed("app.t", "u-1", "error", "ValueError: no", 1.0)
    # The parts of the reply the service's view makes, as it makes them.
    nothing = cast(Any, None)
    view = ServiceView(stats, nothing, nothing, nothing, nothing)
    view.metrics_server = cast(
        Any, SimpleNamespace(host="127.0.0.1", port=8070, url="http://x/metrics", requests=1)
    )
    service.metrics_endpoint = view.metrics_endpoint  # type: ignore[method-assign]
    service.signatures = SignatureCheck(settings.security).summary  # type: ignore[method-assign]
    commands = ControlCommands(service, settings, stats)
    status = json.loads(json.dumps(anyio.run(commands.handle, "status", {})))

    words = documented_words("status")
    assert set(status) - words == set()
    # Ours (dispatcherd's replies have rows of their own, and tests of their shapes).
    ours = {"pool", "listener", "pg_queue", "signatures", "recent_failures"}
    assert ours <= set(status)
    assert {key for name in ours for key in nested_keys(status[name])} - words == set()
    [broker] = status["brokers"].values()
    assert set(broker) - words == set()
    assert nested_keys(status["metrics"]) - documented_words("metrics") == set()
