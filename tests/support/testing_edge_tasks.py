"""Tasks for the edge-case tests of dispatcher.testing (``support.testing_edge_tasks.``)."""

from __future__ import annotations

from typing import Any

from dispatcher.publish import task

SEEN: list[Any] = []
"""What the tasks received, in order: the tests clear it."""


@task(queue="orders")
def keep(value: Any) -> Any:
    """Record *value*, then change it (a task may mutate what it receives)."""
    SEEN.append(value)
    if isinstance(value, list):
        value.append("changed by the task")
    return value


@task(queue="orders")
def resubmit_forever(depth: int) -> None:
    """Submit itself again, without end."""
    resubmit_forever.delay(depth + 1)


@task(queue="orders")
async def resubmit_forever_from_a_coroutine(depth: int) -> None:
    """Submit itself again with the synchronous ``.delay()``, without end."""
    resubmit_forever_from_a_coroutine.delay(depth + 1)


@task(queue="orders")
def explode(reason: str) -> None:
    """Raise ValueError(*reason*)."""
    SEEN.append(reason)
    raise ValueError(reason)


@task(queue="orders")
def interrupt(_: Any) -> None:
    """Raise KeyboardInterrupt, which no worker would catch."""
    raise KeyboardInterrupt
