"""Tying a process's life to its parent's, with the kernel's help (Linux)."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36


@functools.cache
def _prctl() -> Callable[..., int]:
    """The C library's ``prctl``, looked up once per process (forked children inherit it).

    Found among the symbols the running program already has (``dlopen(NULL)``), rather than
    by ``ctypes.util.find_library``, which runs ``ldconfig`` in a subprocess.
    """
    import ctypes  # only where it is needed: the fork server and its workers

    function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return function


def die_with_parent(signum: signal.Signals, parent: int | None = None) -> None:
    """Have the kernel send *signum* to this process when its parent ends.

    *parent* is the pid this process expects as its parent (default: the current one): if
    the parent has already gone when the request takes effect, the process exits at once.
    The kernel ties the signal to the parent's *thread* that created this process, so a
    process meant to outlive no one must be started from its parent's main thread. Does
    nothing on systems other than Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    expected = os.getppid() if parent is None else parent
    _prctl()(_PR_SET_PDEATHSIG, int(signum))
    if os.getppid() != expected:
        os._exit(1)


def adopt_orphans() -> None:
    """Become the parent of this process's descendants orphaned by their own parent's end.

    Without it they go to the system's init, which reaps them; but a service run as PID 1 in
    a container would be that init, and never reap them (zombies pile up). Their new parent
    must reap them. Does nothing on systems other than Linux.
    """
    if sys.platform.startswith("linux"):
        _prctl()(_PR_SET_CHILD_SUBREAPER, 1)
