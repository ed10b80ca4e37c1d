"""Giving back to the system the heap memory that start-up used and freed."""

from __future__ import annotations

import sys


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``).

    Start-up (imports, the config, compiled validators) frees much of what it allocates, and
    the C allocator keeps those pages for reuse: an idle service would carry them for its
    whole life. Called once a process has finished starting. Does nothing where the C library
    has no ``malloc_trim`` (musl, macOS).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # already loaded by the lifeline in the processes that call this

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)
