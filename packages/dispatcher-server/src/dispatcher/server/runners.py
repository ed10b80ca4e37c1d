"""A worker as the scheduler sees it: the small :class:`Runner` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dispatcher.schema import Outcome
from dispatcher.server.jobs import Job


class Runner(Protocol):
    """A worker as the scheduler sees it (a :class:`~dispatcher.server.workers.WorkerHandle`)."""

    @property
    def id(self) -> int:
        """The worker's id."""

    @property
    def job(self) -> Job | None:
        """The job it runs, if any."""

    @property
    def is_ready(self) -> bool:
        """Whether it waits for a job."""

    @property
    def room_ahead(self) -> int:
        """How many jobs it may be sent now to hold ahead (none unless it is busy)."""

    @property
    def ahead(self) -> Sequence[Job]:
        """The jobs it holds ahead, not started yet."""

    @property
    def pending_ahead(self) -> list[Job]:
        """The jobs it holds ahead that are to run: those not cancelled while held."""

    def run(self, job: Job) -> None:
        """Start *job* on it (it is ready)."""

    def hold_ahead(self, jobs: list[Job]) -> None:
        """Send it *jobs* (at most :attr:`room_ahead`) to run after its task, in order."""

    def cancel(self, reason: Outcome = Outcome.CANCELLED) -> None:
        """Cancel its running job."""

    def cancel_ahead(self, job: Job, reason: Outcome = Outcome.CANCELLED) -> bool:
        """Cancel *job*, which it holds ahead."""
