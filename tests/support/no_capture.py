"""A stand-in for a worker's output capture, for a task runner run in the test's process."""

from __future__ import annotations


class NoCapture:
    """Captures nothing: the task's output goes where the test's goes."""

    def begin(self, task: str, uuid: str) -> None:
        """A task starts."""

    def end(self) -> None:
        """The task has ended."""

    def fds_taken(self) -> str | None:
        """No descriptor of a worker's own here: none is taken."""
        return None
