"""Why a worker could not be started: the launcher's errors and their wording."""

from __future__ import annotations

import errno
from typing import Any

from dispatcher.server.resources import PROCESS_LIMIT


class LaunchError(Exception):
    """A worker could not be started."""


class ForkServerReplaced(LaunchError):
    """The fork server did not answer in time: the service is replacing it.

    Not the worker's doing, nor its code's: the next one comes from the new fork server.
    """


def failure_text(event: dict[str, Any]) -> str:
    """Why the fork server could not start a worker, with the limit it likely reached."""
    error = str(event.get("error", "the fork server is gone"))
    number = event.get("errno")
    if number == errno.EAGAIN:  # fork(): the process limit, usually
        return f"{error}: the fork server cannot fork: {PROCESS_LIMIT}"
    if number in (errno.EMFILE, errno.ENFILE):
        return f"{error}: the fork server is out of file descriptors"
    if number == errno.ENOMEM:
        return f"{error}: no memory for a new process"
    return error
