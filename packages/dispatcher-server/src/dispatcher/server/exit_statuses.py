"""The exit statuses a service ends with (``run_service()``, ``dispatcher-standalone``)."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
"""Exit status after a graceful stop."""
EXIT_FORCED: Final = 1
"""Exit status when a second stop signal forces the exit, without waiting for the workers."""
EXIT_CONFIG: Final = 2
"""Exit status when the config cannot serve: here, when ``tasks.modules`` is empty."""
EXIT_TASK_MODULES: Final = 3
"""Exit status when the task modules cannot be imported, or register no task."""
