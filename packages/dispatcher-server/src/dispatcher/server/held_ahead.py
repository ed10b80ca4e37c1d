"""The jobs a worker holds ahead of its task, seen from the service: taken back, recalled.

A base class of :class:`~dispatcher.server.workers.WorkerHandle`, which sends
them (:meth:`~dispatcher.server.workers.WorkerHandle.hold_ahead`) and starts each in turn.
"""

from __future__ import annotations

from collections import deque

from dispatcher.schema import Outcome
from dispatcher.server.handle_status import Process, WorkerStatus
from dispatcher.server.jobs import Job
from dispatcher.server.protocol import PIPELINE_DEPTH, RECALL_SIGNAL, REFILL_BELOW


class HeldAhead:
    """A worker handle's jobs held ahead: the room for more, those to run, their recall."""

    status: WorkerStatus
    process: Process | None
    ahead: deque[Job]
    recalled: bool
    _requests: int
    _cancelled_ahead: dict[int, Outcome]
    _unstarted: list[Job]

    @property
    def room_ahead(self) -> int:
        """How many jobs it may be sent now to hold ahead (:meth:`hold_ahead`).

        None unless it is busy and holds fewer than
        :data:`~dispatcher.server.protocol.REFILL_BELOW`; then as many as make
        :data:`~dispatcher.server.protocol.PIPELINE_DEPTH`, so that they go in one write.
        """
        if self.status is not WorkerStatus.BUSY or len(self.ahead) >= REFILL_BELOW or self.recalled:
            return 0
        return PIPELINE_DEPTH - len(self.ahead)

    @property
    def pending_ahead(self) -> list[Job]:
        """The jobs held ahead that are to run: those not cancelled while held."""
        if not self._cancelled_ahead:
            return list(self.ahead)
        first = self._requests - len(self.ahead) + 1
        return [
            job
            for number, job in enumerate(self.ahead, first)
            if number not in self._cancelled_ahead
        ]

    def take_ahead(self) -> tuple[list[Job], list[tuple[Job, Outcome]]]:
        """Take back the jobs held ahead (none started: its process is gone or going).

        Returns those to run elsewhere, and those cancelled while held, with the outcome
        each ends with.
        """
        first = self._requests - len(self.ahead) + 1
        again: list[Job] = []
        ended: list[tuple[Job, Outcome]] = []
        for number, job in enumerate(self.ahead, first):
            cancelled = self._cancelled_ahead.get(number)
            if cancelled is None:
                again.append(job)
            else:
                ended.append((job, cancelled))
        self.ahead.clear()
        self._cancelled_ahead.clear()
        return again, ended

    def recall_ahead(self) -> bool:
        """Have the jobs it holds ahead not run here (a reload), if it holds any.

        The worker ends unstarted each one it has not started when the signal comes
        (:data:`~dispatcher.server.protocol.RECALL_SIGNAL`), reporting it ``recalled``: it
        comes back through :meth:`take_unstarted`. One it had started already runs to its end
        and ends as reported. Once recalled, a worker is sent nothing more: it is to retire.
        Returns whether it was recalled (now or before).
        """
        if not self.recalled and self.pending_ahead and self.process is not None:
            self.recalled = True
            self.process.signal(RECALL_SIGNAL)
        return self.recalled

    def take_unstarted(self) -> list[Job]:
        """Take the jobs the worker has ended unstarted.

        They were recalled (see :meth:`recall_ahead`), or expired: they came to it after
        their ``start_by``.
        """
        jobs, self._unstarted = self._unstarted, []
        return jobs
