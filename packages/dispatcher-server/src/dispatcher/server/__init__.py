"""The dispatcher service: receives task messages and runs them in worker subprocesses.

Run it with the ``dispatcher-standalone`` command, or from Python::

    from dispatcher.config import setup
    from dispatcher.server import run_service

    setup(file_path="dispatcher.yml")
    run_service()   # blocks until SIGTERM or SIGINT
"""

from dispatcher.server.hooks import BaseWorker
from dispatcher.server.service import Service, run_service

__all__ = ["BaseWorker", "Service", "run_service"]
