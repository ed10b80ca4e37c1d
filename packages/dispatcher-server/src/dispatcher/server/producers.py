"""Work the service starts by itself: ``producers.scheduled`` and ``producers.on_start``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio

from dispatcher.config import ScheduledTask, TaskOptions
from dispatcher.server.intake import Intake
from dispatcher.server.logsafe import get_logger
from dispatcher.server.rejection import Rejected

logger = get_logger("dispatcher.producers")


def _message(task: str, options: TaskOptions) -> dict[str, Any]:
    message: dict[str, Any] = {"task": task, "args": list(options.args)}
    message["kwargs"] = dict(options.kwargs)
    for key in ("timeout", "delay", "on_duplicate"):
        value = getattr(options, key)
        if value is not None:
            message[key] = value
    return message


def _submit(intake: Intake, section: str, task: str, options: TaskOptions) -> None:
    try:
        intake.submit(_message(task, options), section)
    except Rejected as rejected:
        logger.error("producers.%s[%r]: task refused: %s", section, task, rejected)
    except Exception:  # a producer must outlive any one submission
        logger.exception("producers.%s[%r]: submission failed", section, task)


def start_on_start_tasks(intake: Intake, entries: Mapping[str, TaskOptions]) -> None:
    """Submit each ``producers.on_start`` entry once (when the workers are ready)."""
    for task, options in entries.items():
        _submit(intake, "on_start", task, options)


async def run_schedule(intake: Intake, task: str, entry: ScheduledTask) -> None:
    """Submit *task* every ``entry.schedule`` seconds, the first time one period from now.

    Runs stay on the grid ``start + n * period``: a late wake-up does not shift later runs,
    and periods missed entirely (a stalled service) are skipped, not made up.
    """
    period = entry.schedule
    start = time.monotonic()
    runs = 1
    while True:
        await anyio.sleep(max(0.0, start + runs * period - time.monotonic()))
        _submit(intake, "scheduled", task, entry)
        runs = max(runs + 1, int((time.monotonic() - start) // period) + 1)
