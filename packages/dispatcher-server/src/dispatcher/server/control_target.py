"""The window through which control commands read the service and act on it.

:class:`~dispatcher.server.control.ControlCommands` sees the service only through a
:class:`ControlTarget` (:class:`~dispatcher.server.view.ServiceView` implements it), so that
the commands are tested against a fake service.
"""

from __future__ import annotations

from typing import Any, Protocol

from dispatcher.server.jobs import Job, JobPick, Snapshot


class ControlTarget(Protocol):
    """What control commands act on and read: the service, seen through a narrow window."""

    def snapshot(self, limit: int | None) -> Snapshot:
        """Where the jobs are now: on workers (running, held ahead), queued, blocked, delayed.

        With *limit*, the last three places list their first *limit* jobs only.
        """

    def take(self, pick: JobPick) -> list[tuple[str, list[Job]]]:
        """Cancel the jobs *pick* names at once; return them by place (see :meth:`cancelled`)."""

    def cancelled(self, where: str, job: Job) -> None:
        """Count and settle a job :meth:`take` took out of *where*."""

    def workers(self) -> list[dict[str, Any]]:
        """Each worker, with dispatcherd's fields (``worker_id``, ``pid``, ...) and ours."""

    def counts(self) -> dict[str, Any]:
        """Jobs held (``queued``, ``blocked``, ``delayed``) and ``workers`` (count, min, max)."""

    def pool(self) -> dict[str, Any]:
        """``next_worker_id``, ``worker_ct``, ``running_ct`` and ``active_task_ct``."""

    def chunks(self) -> dict[str, Any]:
        """Incomplete chunked messages: ``{"status": {...}, "partials": ...}``."""

    def aio_tasks(self, limit: int) -> dict[str, Any]:
        """The main process's asyncio tasks: ``{name: {"done", "stack"}}``."""

    def signatures(self) -> dict[str, Any]:
        """The signature settings in force and the replay guard's state."""

    def metrics_endpoint(self) -> dict[str, Any]:
        """Whether the metrics endpoint is on, and where."""

    def submit(self, message: dict[str, Any]) -> str:
        """Submit a task message made here; return its uuid (raises ``Rejected``)."""
