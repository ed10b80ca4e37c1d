"""Tying a process's life to its parent's, and its orphans' to its own (Linux)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
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

    Without it they go to the system's init (or to a nearer ancestor that adopts orphans),
    and outlive this process. Their new parent must reap them, and kill them when it should.
    Does nothing on systems other than Linux.
    """
    if sys.platform.startswith("linux"):
        _prctl()(_PR_SET_CHILD_SUBREAPER, 1)


def children() -> list[int]:
    """The pids of this process's children, ended ones not yet reaped included.

    From ``/proc``: each thread's children (an orphan adopted by this process is its main
    thread's), or, where the kernel does not list them, the parent of each process.
    """
    me = os.getpid()
    try:
        with open(f"/proc/self/task/{me}/children", encoding="ascii") as listed:
            found = [int(pid) for pid in listed.read().split()]
        threads = os.listdir("/proc/self/task")
    except OSError:  # (a kernel without CONFIG_PROC_CHILDREN, or no /proc)
        return _children_by_scan()
    for thread in threads:
        if thread != str(me):
            with (
                contextlib.suppress(OSError),  # (the thread ended)
                open(f"/proc/self/task/{thread}/children", encoding="ascii") as listed,
            ):
                found += [int(pid) for pid in listed.read().split()]
    return found


def _children_by_scan() -> list[int]:
    me, found = os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with (
                    contextlib.suppress(OSError, ValueError, IndexError),
                    open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat,
                ):
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == me:
                        found.append(int(entry))
    return found


def reap_children(spare: Collection[int] = ()) -> set[int]:
    """Reap this process's children that have ended, but those in *spare*; their pids.

    Each is waited for by its pid: the exit status of a child in *spare* (one that other
    code waits for) is left for that code.
    """
    reaped = set()
    for pid in children():
        if pid not in spare:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.add(pid)
    return reaped


def kill_children(deadline: float, spare: Collection[int] = ()) -> set[int]:
    """Kill this process's children (but those in *spare*), and the groups they lead; again.

    The children of those killed come here in turn as they die, if this process adopts
    orphans (:func:`adopt_orphans`): each is killed and reaped, until none is left, or
    *deadline* (``time.monotonic()``). Returns the pids of those killed.
    """
    own_group = os.getpgid(0)
    killed: set[int] = set()
    while True:
        left = [pid for pid in children() if pid not in spare]
        for pid in left:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid != own_group:
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed.update(left)
        reap_children(spare)
        if not left or time.monotonic() > deadline:
            return killed
        time.sleep(0.005)  # (for the killed to die, and their orphans to come here)
