"""What a ``bind=True`` task receives first when :mod:`dispatcher.testing` runs it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dispatcher.publish.errors import PublishError
from dispatcher.publish.submit_sync import submit_task

SUBMIT_OPTIONS: Final = ("args", "kwargs", "uuid", "timeout", "delay", "on_duplicate", "bind")
"""Keys of a ``run`` command's message that are options of ``submit_task()``."""

IGNORED_KEYS: Final = ("queue", "max_attempts", "processor_options", "connection")
"""Keys of a ``run`` command's message named as ``submit_task()``'s other arguments, which
``extra`` refuses: a service's ``run`` takes the message as it is, and they do nothing."""

QUIET_COMMANDS: Final = frozenset({"running", "cancel", "alive"})
"""Commands answered as a service with nothing else running would: an empty reply."""


class InMemoryBoundTask:
    """The service's bound-task object, in memory: ``uuid``, ``worker_id`` and ``control()``.

    ``control("run", message)`` submits that task here (so it runs at once in eager mode, or
    is captured); ``running``, ``cancel`` and ``alive`` reply ``{}``; any other command
    replies ``{"error": ...}``. Every command is recorded in :attr:`controls`.
    """

    def __init__(self, uuid: str, worker_id: int = 0) -> None:
        self.uuid = uuid
        """The uuid of the message being run."""
        self.worker_id = worker_id
        """The id of the worker running it: always 0 here."""
        self.controls: list[tuple[str, dict[str, Any]]] = []
        """The control commands sent, with their data, in order."""

    def control(self, command: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Answer a control command as described in the class; record it."""
        data = dict(data or {})
        self.controls.append((command, data))
        if command == "run":
            return _run(data)
        if command in QUIET_COMMANDS:
            return {}
        return {"error": f"control command {command!r} is not simulated by dispatcher.testing"}


def _run(data: dict[str, Any]) -> dict[str, Any]:
    """Submit the task message *data*; reply as the service's ``run`` command does."""
    message = dict(data)
    task = message.pop("task", None)
    if not isinstance(task, str):
        return {"error": "task refused: the message has no task name"}
    message.pop("time_pub", None)
    options = {key: message.pop(key) for key in SUBMIT_OPTIONS if key in message}
    for key in IGNORED_KEYS:  # a service keeps them in the message, where they do nothing
        message.pop(key, None)
    try:
        submission = submit_task(task, extra=message or None, **options)
    except PublishError as exc:
        return {"error": f"task refused: {exc}"}
    return {"ack": {**data, "uuid": submission.uuid}, "uuid": submission.uuid}
