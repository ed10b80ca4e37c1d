"""Control replies read the way dispatcherd's clients read them.

Written for our tests after reading what dispatcherd's ``dispatcherctl`` and demo script, and
AWX, do with the replies of dispatcherd's ``Control.control_with_reply`` (a list of dicts,
one per service): not their code, the same expectations.
"""

from __future__ import annotations

from typing import Any


def awx_still_running(replies: list[dict[str, Any]], task_name: str) -> list[dict[str, Any]]:
    """AWX's wait for a task to finish: one reply; every value but ``node_id``'s is a message."""
    assert len(replies) == 1
    reply = dict(replies[0])
    reply.pop("node_id")
    return [data for data in reply.values() if data["task"] == task_name]


def running_worker_uuid(replies: list[dict[str, Any]]) -> str | None:
    """dispatcherd's tests: the uuid of the (first) task found running on a worker."""
    for reply in replies:
        for key, message in reply.items():
            if key.startswith("worker-"):
                return str(message["uuid"])
    return None


def demo_aio_tasks(replies: list[dict[str, Any]]) -> list[str]:
    """dispatcherd's demo: ``done`` and ``stack`` of each asyncio task of each service."""
    shown = []
    for reply in replies:
        data = dict(reply)
        data.pop("node_id", None)
        shown += [f"{name} done={task['done']}\n{task['stack']}" for name, task in data.items()]
    return shown


def worker_rows(replies: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """``workers``: (worker_id, pid, status) of each ``worker-N`` entry."""
    rows = []
    for reply in replies:
        for key, worker in reply.items():
            if key.startswith("worker-"):
                rows.append((worker["worker_id"], worker["pid"], worker["status"]))
    return rows


def pool_counts(replies: list[dict[str, Any]]) -> tuple[int, int]:
    """``main``: the pool's finished and cancelled counts of the (one) service."""
    [reply] = replies
    return reply["pool"]["finished_count"], reply["pool"]["canceled_count"]
