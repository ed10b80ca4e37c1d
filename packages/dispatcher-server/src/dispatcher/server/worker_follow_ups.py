"""A task message's errbacks and callbacks, run after its task, as dispatcherd runs them.

If the task raised, each of the message's ``errbacks`` runs; then, whether it raised or not,
each of its ``callbacks``: task messages of their own, run in the same worker and the same
job, one after the other (see :meth:`~dispatcher.server.worker_runner.TaskRunner.run`). One
that ends ``cancelled`` or ``exit`` ends the rest, and says how the job ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dispatcher.server.dispatcherd_tasks import Conventions
from dispatcher.server.log_arguments import Block
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import describe_exception
from dispatcher.server.worker_tracebacks import traceback_of

logger = get_logger("dispatcher.worker")


def has_follow_ups(message: Mapping[str, Any]) -> bool:
    """Whether *message* has errbacks or callbacks."""
    return bool(message.get("callbacks") or message.get("errbacks"))


class FollowUps:
    """Runs the errbacks and callbacks of a task message, each by *call* (the worker's).

    *conventions* say which exceptions end one ``cancelled``, and which ``exit``.
    """

    def __init__(
        self, call: Callable[[Mapping[str, Any]], object], conventions: Conventions
    ) -> None:
        self._call = call
        self._conventions = conventions

    def run(self, message: Mapping[str, Any], done: dict[str, Any]) -> None:
        """Run the errbacks and callbacks of *message*, whose task ended as *done* says."""
        uuid = str(done["uuid"])
        ended = self._follow_ups(message, uuid, failed=done["outcome"] == "error")
        if ended == "cancelled":
            done["outcome"] = "cancelled"
            for key in ("result", "result_note", "error", "traceback"):
                done.pop(key, None)
        elif ended == "exit" and done["outcome"] == "ok":
            done["outcome"] = "exit"
        elif ended == "exit":  # the job failed: that is what the service must hear
            logger.warning(
                "task %s (uuid %s): DispatcherExit in one of its errbacks or callbacks is "
                "ignored after the task failed; the worker carries on",
                message.get("task"),
                uuid,
            )

    def _follow_ups(self, message: Mapping[str, Any], uuid: str, failed: bool) -> str | None:
        """Run the errbacks (if *failed*) then the callbacks of *message*, and theirs.

        Returns ``None``, or ``cancelled`` or ``exit`` when one of them ended so (the rest
        are skipped).
        """
        for kind in ("errbacks", "callbacks") if failed else ("callbacks",):
            for follow_up in message.get(kind) or ():
                ended = self._run_follow_up(follow_up, kind, message, uuid)
                if ended is not None:
                    return ended
        return None

    def _run_follow_up(
        self, follow_up: Mapping[str, Any], kind: str, parent: Mapping[str, Any], uuid: str
    ) -> str | None:
        """Run one errback or callback (it has the *uuid* of the job), then its own."""
        follow_up = {**follow_up, "uuid": uuid}
        try:
            self._call(follow_up)
        except self._conventions.cancels:
            return "cancelled"
        except self._conventions.exits:
            return "exit"
        except BaseException as exc:  # as for the task: SystemExit too is its error
            logger.error(
                "task %s (uuid %s): %s %s failed: %s%s",
                parent.get("task"),
                uuid,
                kind.removesuffix("s"),
                follow_up.get("task"),
                describe_exception(exc),
                Block(traceback_of(exc)),
            )
            return self._follow_ups(follow_up, uuid, failed=True)
        return self._follow_ups(follow_up, uuid, failed=False)
