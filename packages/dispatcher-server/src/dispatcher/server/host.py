"""Whether this host can run the service: Linux 5.3 or later, ``pidfd_open`` allowed.

The service watches and signals its workers through pidfds (``os.pidfd_open``, Linux 5.3)
and cancels tasks with real-time signals (``signal.SIGRTMIN``, Linux only); macOS and
Windows have neither, and Windows no ``fork()``. On an older kernel, or in a container whose
seccomp profile blocks the call (Docker before 20.10), ``pidfd_open`` fails with ENOSYS or
EPERM and no worker could ever start. So the commands that run the service check first and
refuse in one line (exit status 2) rather than failing at import or running without
workers. Imports nothing that a non-Linux platform lacks.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Final

from dispatcher.schema import DispatcherError

REQUIREMENT: Final = "the dispatcher service runs on Linux 5.3 or later"
"""The requirement, as the refusals begin."""


class UnsupportedHost(DispatcherError):
    """The host cannot run the service (the message says why, and what to do)."""


def unsupported_host() -> str | None:
    """Why this host cannot run the service, in one line; ``None`` when it can."""
    if not sys.platform.startswith("linux"):
        return (
            f"{REQUIREMENT}, not on {_platform_name()}: run it in a Linux container (Docker, "
            "Podman, WSL 2); publishing tasks and dispatcherctl work from here"
        )
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return f"{REQUIREMENT}: this Python has no os.pidfd_open (built for an older kernel)"
    try:
        os.close(pidfd_open(os.getpid()))
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM):
            return None  # not the kernel's doing (no file descriptor left, say)
        return (
            f"{REQUIREMENT}: pidfd_open fails here ({exc.strerror}): the kernel is older, "
            "or a seccomp profile blocks the call (Docker before 20.10): upgrade the kernel "
            "or the container runtime, or allow pidfd_open in the profile"
        )
    return None


def _platform_name() -> str:
    if sys.platform == "darwin":
        return "macOS"
    if sys.platform == "win32":
        return "Windows"
    return sys.platform


def refuse_unsupported_host() -> None:
    """Raise :class:`UnsupportedHost` when this host cannot run the service."""
    why = unsupported_host()
    if why is not None:
        raise UnsupportedHost(why)
