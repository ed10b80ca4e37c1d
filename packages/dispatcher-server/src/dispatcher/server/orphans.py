"""The orphans the service's main process adopts: reaped as they end, killed as it stops.

``dispatcher-standalone`` makes its main process the parent of its descendants orphaned by
their own parent's end (``PR_SET_CHILD_SUBREAPER``, Linux). A fork server adopts what the
tasks of its workers leave behind (see :mod:`dispatcher.server.forkserver`); when the fork
server itself ends before the service (killed, or replaced by the service because it stopped
answering), its workers and what it had adopted come to the main process, rather than to the
system's init, where they would outlive the service. Run as PID 1 of a container, the main
process is that init: every orphan of the container comes to it (the processes a ``kubectl
exec`` session left behind, say).

Either way it reaps them as they end (on SIGCHLD), and kills those still running, with the
process groups they lead, once the service has stopped its fork servers. Only the children
the service did not start are reaped, each by its pid: the fork servers are waited for by the
launcher, which reads their exit status.

The children the process already had when it began adopting are no orphans: the program
that ``exec``'d the service left them (a container's entrypoint ``sidecar & exec
dispatcher-standalone``). They are reaped as they end, as they are the service's children
now, but never killed: they run on after the service. An application that runs a service in its own
process (``run_service()``) may wait for children of its own: the service adopts nothing
there (see :class:`~dispatcher.server.service.Service`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Collection
from typing import Final

import anyio
from anyio.abc import TaskStatus

from dispatcher.server.lifeline import adopt_orphans, children, kill_children, reap_children
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted

logger = get_logger("dispatcher.service")

KILL_GRACE: Final = 0.5
"""Seconds the service spends, as it stops, killing the processes it adopted (at most)."""


class Orphans:
    """The children of this process that the service did not start: reaped; killed if adopted.

    *own* gives the pids of the children the service waits for itself (its fork servers).
    """

    def __init__(self, own: Callable[[], Collection[int]]) -> None:
        self._own = own
        self._inherited: set[int] = set()
        """The children this process had before it adopted any (not yet reaped): left alone."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Adopt the orphans of this process's descendants, and reap them until cancelled."""
        adopt_orphans()
        self._inherited = set(children()).difference(self._own())
        with anyio.open_signal_receiver(signal.SIGCHLD) as ended:
            self._reap()  # those that ended before
            task_status.started()
            async for _ in ended:
                self._reap()

    def _reap(self) -> None:
        # (a pid reaped may be taken again, by an orphan adopted later)
        self._inherited.difference_update(reap_children(self._own()))

    def kill(self) -> None:
        """Kill the adopted children still running, and the groups they lead; reap them.

        The children inherited across ``exec`` are spared (reaped if they ended).
        """
        self._reap()
        spared = {*self._own(), *self._inherited}
        killed = kill_children(time.monotonic() + KILL_GRACE, spare=spared)
        if killed:
            logger.info(
                "killed %s left behind: by tasks whose fork server had ended%s",
                counted(len(killed), "process", "processes"),
                ", or by other processes of the container" if os.getpid() == 1 else "",
            )
