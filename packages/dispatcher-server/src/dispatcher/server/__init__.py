"""The dispatcher service: receives task messages and runs them in worker subprocesses.

Run it with the ``dispatcher-standalone`` command, or from Python::

    from dispatcher.config import setup
    from dispatcher.server import run_service

    setup(file_path="dispatcher.yml")
    run_service()   # blocks until SIGTERM, SIGINT or SIGHUP (each stops it; none reloads)

From the main thread only, where no event loop runs; inside a running asyncio loop,
``await Service(settings).run()``. Once it returns, the process's handlers of those signals
are as they were. SIGHUP stays ignored in a process started with it ignored (``nohup``).
The service runs on Linux (5.3 or later) only: on another platform, importing either name
raises :class:`~dispatcher.server.host.UnsupportedHost`, saying so.

The names are imported on first use, so that the workers' fork server, which imports
``dispatcher.server.forkserver``, does not load the service's own machinery (anyio, the
listener) into every worker.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.server.hooks import BaseWorker
    from dispatcher.server.service import Service
    from dispatcher.server.service_loop import run_service

__all__ = ["BaseWorker", "Service", "run_service"]

_HOMES = {
    "BaseWorker": "dispatcher.server.hooks",
    "Service": "dispatcher.server.service",
    "run_service": "dispatcher.server.service_loop",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dispatcher.server' has no attribute {name!r}")
    if home != "dispatcher.server.hooks" and not sys.platform.startswith("linux"):
        from dispatcher.server.host import refuse_unsupported_host

        refuse_unsupported_host()  # (rather than fail importing what Linux alone has)
    return getattr(importlib.import_module(home), name)
