"""Another platform simulated on Linux, in a subprocess: what the code under test finds missing.

Python imports ``sitecustomize`` at start-up from ``sys.path``: a test puts this folder first
on the subprocess's ``PYTHONPATH`` (see :func:`support.platforms.platform_env`) and names
the platform in ``DISPATCHER_SIMULATED_PLATFORM``:

- ``windows``: ``sys.platform`` is ``win32``; no ``os.register_at_fork`` (nor ``fork``,
  ``pidfd_open``...), no ``socket.AF_UNIX``, no signals but the six Windows has (no
  signal masks either), no ``termios``,
  ``tty``, ``resource``, ``fcntl``...; asyncio's default event loop is a
  ``ProactorEventLoop``, which psycopg's async connections refuse (as on Windows).
- ``macos``: ``sys.platform`` is ``darwin``; no ``pidfd_open``, no real-time signals
  (``SIGRTMIN``), no ``sched_getaffinity``...
- ``old-linux``: Linux before 5.3 (or a seccomp profile that blocks the call):
  ``os.pidfd_open`` fails with ENOSYS.
- ``blocked-pidfd-signal``: Linux whose seccomp profile allows ``pidfd_open`` but not
  ``pidfd_send_signal``: ``signal.pidfd_send_signal`` fails with EPERM.

The standard library's modules that look at the platform as they are imported are imported
first, as the real platform's, so that only the code under test sees the other one.
"""

from __future__ import annotations

import errno
import os
import sys

_PLATFORM = os.environ.get("DISPATCHER_SIMULATED_PLATFORM", "")

_PREIMPORTED = (
    "asyncio",
    "concurrent.futures",
    "ctypes.util",
    "getpass",
    "logging.handlers",
    "mimetypes",
    "multiprocessing",
    "pathlib",
    "platform",
    "select",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "subprocess",
    "tempfile",
    "uuid",
    "zoneinfo",
)

_WINDOWS_LACKS = {
    "os": (
        "register_at_fork",
        "fork",
        "forkpty",
        "killpg",
        "setsid",
        "setpgid",
        "getpgid",
        "pidfd_open",
        "memfd_create",
        "sched_getaffinity",
        "getloadavg",
        "mkfifo",
        "getuid",
        "geteuid",
        "getpgrp",
        "pipe2",
        "WNOHANG",
    ),
    "signal": (
        "pthread_sigmask",
        "pthread_kill",
        "sigpending",
        "sigwait",
        "sigwaitinfo",
        "sigtimedwait",
        "siginterrupt",
        "pidfd_send_signal",
        "setitimer",
        "getitimer",
        "alarm",
        "pause",
        "SIG_BLOCK",
        "SIG_UNBLOCK",
        "SIG_SETMASK",
    ),
    "socket": ("AF_UNIX", "send_fds", "recv_fds"),
}
_WINDOWS_SIGNALS = frozenset({"SIGABRT", "SIGFPE", "SIGILL", "SIGINT", "SIGSEGV", "SIGTERM"})
"""The only signal numbers Windows' ``signal`` module has (and SIGBREAK)."""
_WINDOWS_MODULES = ("fcntl", "termios", "tty", "pty", "resource", "pwd", "grp", "syslog")

_MACOS_LACKS = {
    "os": ("pidfd_open", "memfd_create", "sched_getaffinity", "sched_setaffinity", "eventfd"),
    "signal": ("SIGRTMIN", "SIGRTMAX", "pidfd_send_signal", "sigtimedwait", "sigwaitinfo"),
    "socket": ("SO_PEERCRED", "TCP_USER_TIMEOUT"),
}


def _remove(lacks: dict[str, tuple[str, ...]]) -> None:
    for module, names in lacks.items():
        for name in names:
            if hasattr(sys.modules[module], name):
                delattr(sys.modules[module], name)


def _windows() -> None:
    import asyncio
    import socket

    # Windows' socketpair() makes its pair without AF_UNIX (over TCP); Linux's falls back to
    # AF_INET once AF_UNIX is gone, which Linux refuses: it keeps making Unix pairs here.
    unix, pair = socket.AF_UNIX, socket.socketpair

    def socketpair(
        family: int | None = None, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> tuple[socket.socket, socket.socket]:
        return pair(unix if family is None else family, type, proto)

    socket.socketpair = socketpair

    class ProactorEventLoop(asyncio.SelectorEventLoop):
        """Stands for Windows' default loop (which psycopg's async connections refuse)."""

    class Policy(asyncio.DefaultEventLoopPolicy):
        _loop_factory = ProactorEventLoop

    asyncio.ProactorEventLoop = ProactorEventLoop  # type: ignore[attr-defined]
    asyncio.set_event_loop_policy(Policy())
    _remove(_WINDOWS_LACKS)
    import signal

    for name in dir(signal):
        if name.startswith("SIG") and not name.startswith("SIG_") and name not in _WINDOWS_SIGNALS:
            delattr(signal, name)
    for name in _WINDOWS_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    sys.platform = "win32"


def _macos() -> None:
    _remove(_MACOS_LACKS)
    sys.platform = "darwin"


def _old_linux() -> None:
    def pidfd_open(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    os.pidfd_open = pidfd_open


def _blocked_pidfd_signal() -> None:
    import signal

    def pidfd_send_signal(pidfd: int, sig: int, siginfo: object = None, flags: int = 0) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    signal.pidfd_send_signal = pidfd_send_signal


if _PLATFORM:
    for _module in _PREIMPORTED:
        __import__(_module)
    {
        "windows": _windows,
        "macos": _macos,
        "old-linux": _old_linux,
        "blocked-pidfd-signal": _blocked_pidfd_signal,
    }[_PLATFORM]()
