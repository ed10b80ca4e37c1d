"""The shapes of control replies that dispatcherd's clients read (dispatcherd 2026.5.27).

Written from what dispatcherd's service answers and what its readers (its ``dispatcherctl``,
its tests and demo, AWX) take from the replies: the keys they index, and the types they
expect. Every reply is a dict with ``node_id``; a service may add keys of its own (ours do),
so these check that the expected keys are there with the expected types, never that others
are absent. The compatibility tests check a real dispatcherd service against them too, so
that they say what dispatcherd does.
"""

from __future__ import annotations

import re
from typing import Any

SLOT = re.compile(r"(worker|blocked|queued|delayed)-\d+")
"""The keys of ``running`` and ``cancel`` replies: where each task is."""

WORKER_STATUSES = {
    "initialized",
    "spawned",
    "starting",
    "ready",
    "stopping",
    "exited",
    "error",
    "retired",
}
WORKER_FIELDS = {
    "worker_id": int,
    "pid": int,
    "status": str,
    "finished_count": int,
    "current_task": (str, type(None)),
    "current_task_uuid": (str, type(None)),
    "active_cancel": bool,
    "age": (int, float),
}
MAIN_FIELDS = {"received_count": int, "control_count": int, "pid": int, "pool": dict}
POOL_FIELDS = {
    "next_worker_id": int,
    "finished_count": int,
    "canceled_count": int,
    "retirement_count": int,
    "worker_ct": int,
    "running_ct": int,
    "active_task_ct": int,
    "usage": dict,
}
USAGE_FIELDS = {"count": int, "top5": dict, "near_worker_ct": dict}
CHUNK_COUNTERS = {
    "total_chunks_received",
    "successful_assemblies",
    "errored_assemblies",
    "timed_out_assemblies",
    "active_messages",
}
STATUS_PARTS = {"running", "aio_tasks", "workers", "producers", "metrics", "main", "chunks"}
"""``status``: the replies of these commands, each without ``node_id``."""


def body(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply without its ``node_id`` (which every reply has, a string)."""
    assert isinstance(reply.get("node_id"), str), f"no node_id: {reply}"
    return {key: value for key, value in reply.items() if key != "node_id"}


def fields(where: str, data: Any, expected: dict[str, Any]) -> None:
    assert isinstance(data, dict), f"{where}: not a dict: {data!r}"
    missing = sorted(set(expected) - set(data))
    assert not missing, f"{where}: missing {missing} in {sorted(data)}"
    for key, kind in expected.items():
        value = data[key]
        wrong = isinstance(value, bool) and kind is int  # a bool is not a count
        assert isinstance(value, kind), f"{where}.{key}: {value!r} is not {kind}"
        assert not wrong, f"{where}.{key}: {value!r} is a bool, not a count"


def tasks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``running``/``cancel`` (without node_id): slot -> the task's message, as it arrived."""
    for slot, message in data.items():
        assert SLOT.fullmatch(slot), (
            f"running: {slot!r} is not worker-N, blocked-N, queued-N or delayed-N"
        )
        assert isinstance(message, dict), f"running: {slot}: {message!r}"
        assert isinstance(message.get("task"), str), f"running: {slot}: no task in {message!r}"
        assert isinstance(message.get("uuid"), str), f"running: {slot}: no uuid in {message!r}"
    return data


def workers(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    for key, worker in data.items():
        assert re.fullmatch(r"worker-\d+", key), f"workers: {key!r} is not worker-N"
        fields(f"workers.{key}", worker, WORKER_FIELDS)
        assert worker["status"] in WORKER_STATUSES, f"workers.{key}.status: {worker['status']!r}"
        assert key == f"worker-{worker['worker_id']}"
    return data


def aio_tasks(data: dict[str, Any]) -> dict[str, Any]:
    assert data, "aio_tasks: no task"
    for name, task in data.items():
        fields(f"aio_tasks.{name}", task, {"done": bool, "stack": str})
    return data


def producers(data: dict[str, Any]) -> dict[str, Any]:
    assert "pg_notify-producer" in data, f"producers: no 'pg_notify-producer' in {sorted(data)}"
    fields(
        "producers.pg_notify-producer",
        data["pg_notify-producer"],
        {"produced_count": int, "recycle_count": int},
    )
    for name, producer in data.items():
        assert name.endswith("-producer"), f"producers: {name!r} is not '<name>-producer'"
        assert isinstance(producer, dict)
    return data


def metrics(data: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(data.get("enabled"), bool), f"metrics: {data}"
    return data


def main(data: dict[str, Any]) -> dict[str, Any]:
    fields("main", data, MAIN_FIELDS)
    fields("main.pool", data["pool"], POOL_FIELDS)
    fields("main.pool.usage", data["pool"]["usage"], USAGE_FIELDS)
    return data


def chunks(data: dict[str, Any]) -> dict[str, Any]:
    fields("chunks", data, {"status": dict, "partials": dict})
    fields("chunks.status", data["status"], dict.fromkeys(CHUNK_COUNTERS, int))
    return data


def status(data: dict[str, Any]) -> dict[str, Any]:
    missing = sorted(STATUS_PARTS - set(data))
    assert not missing, f"status: missing {missing} in {sorted(data)}"
    tasks(data["running"])
    aio_tasks(data["aio_tasks"])
    workers(data["workers"])
    producers(data["producers"])
    metrics(data["metrics"])
    main(data["main"])
    chunks(data["chunks"])
    return data


def set_log_level(data: dict[str, Any]) -> dict[str, Any]:
    fields("set_log_level", data, {"logger": str, "level": str, "previous_level": str})
    return data


CHECKS = {
    "running": tasks,
    "cancel": tasks,
    "workers": workers,
    "aio_tasks": aio_tasks,
    "producers": producers,
    "metrics": metrics,
    "main": main,
    "chunks": chunks,
    "status": status,
    "set_log_level": set_log_level,
}


def check(command: str, reply: dict[str, Any]) -> dict[str, Any]:
    """Check one reply to *command*; return it without ``node_id``."""
    data = body(reply)
    if command == "alive":
        assert data == {}, f"alive: {data}"
    elif command in CHECKS:
        CHECKS[command](data)
    return data
