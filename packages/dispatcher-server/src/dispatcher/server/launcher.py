"""Starting worker processes from a fork server that has the task modules loaded."""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

from dispatcher.server.worker import PRELOAD_ENV, WorkerOptions, worker_main


class WorkerLauncher:
    """Forks workers from a multiprocessing fork server.

    The fork server is started once (on the first launch) with ``dispatcher.server.worker``
    and the task modules imported; each worker is then a cheap fork of it. The service's
    main process, which runs an event loop and threads, is never forked itself.
    """

    def __init__(
        self,
        modules: Sequence[str],
        log_level: int,
        hooks_class: str | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.modules = tuple(modules)
        self.log_level = log_level
        self.hooks_class = hooks_class
        self.idle_timeout = idle_timeout
        self._context = multiprocessing.get_context("forkserver")
        # The fork server reads the module list when it starts (see dispatcher.server.preload).
        os.environ[PRELOAD_ENV] = ",".join(self.modules)
        self._context.set_forkserver_preload(["dispatcher.server.preload"])

    def launch(self, worker_id: int) -> tuple[BaseProcess, socket.socket]:
        """Start worker *worker_id*; return its process and the service's end of its socket.

        Blocks for a few milliseconds (longer for the very first worker, which starts the
        fork server): call it from a thread.
        """
        ours, theirs = socket.socketpair()
        process = self._context.Process(
            target=worker_main,
            args=(
                theirs,
                WorkerOptions(
                    worker_id, self.modules, self.hooks_class, self.idle_timeout, self.log_level
                ),
            ),
            name=f"dispatcher-worker-{worker_id}",
        )
        try:
            process.start()
        finally:
            theirs.close()
        ours.setblocking(False)
        return process, ours
