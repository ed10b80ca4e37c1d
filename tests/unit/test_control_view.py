"""The service's view for control replies: dispatcherd's worker statuses and ``pool.usage``."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.view import ServiceView


def worker(n: int, status: WorkerStatus, idle_for: float = 0.0, busy: bool = False) -> Any:
    return SimpleNamespace(
        id=n,
        pid=1,
        status=status,
        job=SimpleNamespace(task="app.t", uuid=f"u-{n}") if busy else None,
        ahead=[],
        pending_ahead=[],
        idle_since=time.monotonic() - idle_for,
        created=time.monotonic(),
        job_since=time.monotonic() - 7,
        tasks_done=0,
        cancelling=None,
    )


def view(workers: list[Any], queued: int = 0) -> ServiceView:
    supervisor = SimpleNamespace(workers=workers, next_worker_id=len(workers))
    scheduler = SimpleNamespace(queued=queued)
    return ServiceView(
        cast(Any, None),
        cast(Any, scheduler),
        cast(Any, supervisor),
        cast(Any, None),
        cast(Any, None),
    )


def test_a_busy_worker_is_ready_in_dispatcherds_words_and_busy_in_ours() -> None:
    [found] = view([worker(0, WorkerStatus.BUSY, busy=True)]).workers()
    assert (found["status"], found["state"], found["current_task_uuid"]) == ("ready", "busy", "u-0")
    assert 7 <= found["current_task_age"] < 8


def test_usage_says_which_pool_sizes_are_needed_and_since_when_the_others_are_not() -> None:
    workers = [
        worker(0, WorkerStatus.BUSY, busy=True),
        worker(1, WorkerStatus.READY, idle_for=30),
        worker(2, WorkerStatus.READY, idle_for=5),
        worker(3, WorkerStatus.EXITED),
    ]
    usage = view(workers).pool()["usage"]
    assert usage["count"] == 3
    assert usage["top5"][1] == "blocked"
    assert 4 <= usage["top5"][2] <= 6  # the most recently idle worker made the 2nd needed
    assert 29 <= usage["top5"][3] <= 31
    assert sorted(usage["near_worker_ct"]) == [1, 2, 3, 4, 5]
    assert usage["near_worker_ct"][4] == "absent"
    assert view(workers, queued=5).usage()["top5"] == {3: "blocked", 2: "blocked", 1: "blocked"}
