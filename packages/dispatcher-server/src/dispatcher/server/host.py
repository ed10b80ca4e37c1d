"""Whether this host can run the service: Linux 5.3 or later, the pidfd calls allowed.

The service watches and signals its workers through pidfds (``os.pidfd_open``, Linux 5.3;
``signal.pidfd_send_signal``) and cancels tasks with real-time signals (``signal.SIGRTMIN``,
Linux only); macOS and Windows have neither, and Windows no ``fork()``. On an older kernel,
or in a container whose seccomp profile blocks a call (Docker before 20.10), ``pidfd_open``
fails (ENOSYS, EPERM) and no worker could ever start; ``pidfd_send_signal`` blocked, no
timeout, cancel or stop would reach a worker. So the commands that run the service check
first and refuse in one line (exit status 2), and ``run_service()`` and ``Service.run()``
raise :class:`UnsupportedHost`, rather than failing at import or running without workers.
Imports nothing that a non-Linux platform lacks.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Final

from dispatcher.schema import DispatcherError

REQUIREMENT: Final = "the dispatcher service runs on Linux 5.3 or later"
"""The requirement, as the refusals begin."""

_SHORTAGES: Final = frozenset({errno.EMFILE, errno.ENFILE})
"""Errors of the probes that say the process is short of a resource, not that the host
cannot run the service."""


class UnsupportedHost(DispatcherError):
    """The host cannot run the service (the message says why, and what to do)."""


def unsupported_host() -> str | None:
    """Why this host cannot run the service, in one line; ``None`` when it can.

    Opens a pidfd of this process and sends it signal 0 through it: each call fails where
    the kernel lacks it or a seccomp profile blocks it. Out of file descriptors (EMFILE,
    ENFILE) is no reason to refuse here: the service says so where it meets the shortage.
    """
    if not sys.platform.startswith("linux"):
        return (
            f"{REQUIREMENT}, not on {_platform_name()}: run it in a Linux container (Docker, "
            "Podman, WSL 2); publishing tasks and dispatcherctl work from here"
        )
    pidfd_open = getattr(os, "pidfd_open", None)
    send_signal = getattr(signal, "pidfd_send_signal", None)
    if pidfd_open is None or send_signal is None:
        missing = "os.pidfd_open" if pidfd_open is None else "signal.pidfd_send_signal"
        return f"{REQUIREMENT}: this Python has no {missing} (built for an older kernel)"
    try:
        pidfd = pidfd_open(os.getpid())
    except OSError as exc:
        return _refusal("pidfd_open", exc)
    try:
        send_signal(pidfd, 0)  # (signal 0: the permission is checked, nothing is sent)
    except OSError as exc:
        return _refusal("pidfd_send_signal", exc)
    finally:
        os.close(pidfd)
    return None


def _refusal(call: str, exc: OSError) -> str | None:
    """Why the host cannot run the service, *call* having failed with *exc*.

    ``None`` when that is no reason to refuse (no file descriptor left).
    """
    if exc.errno in _SHORTAGES:
        return None
    return (
        f"{REQUIREMENT}: {call} fails here ({exc.strerror or exc}): the kernel is older, "
        f"or a seccomp profile blocks the call (Docker before 20.10): upgrade the kernel "
        f"or the container runtime, or allow {call} in the profile"
    )


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
