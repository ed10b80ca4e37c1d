"""Imported by the workers' fork server: loads the task modules before any worker is forked.

Importing this module has that one effect (see :func:`worker.preload_task_modules`).
"""

from dispatcher.server.worker import preload_task_modules

preload_task_modules()
