"""Where a service may run, and :class:`CannotRunHere` where it may not.

A service handles the stop signals, which only the main thread can, and runs on asyncio
only: in the application's running loop (``await Service(settings).run()``), or in a loop of
its own (``run_service()``, where none runs yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from dispatcher.schema import DispatcherError


class CannotRunHere(DispatcherError, RuntimeError):
    """A service cannot run where it was asked to; nothing was started.

    It needs the main thread (it handles the stop signals) and an asyncio event loop:
    :func:`~dispatcher.server.service_loop.run_service` runs one of its own, so it cannot be
    called inside a running one (there, ``await Service(settings).run()``).
    """

    # Its documented home (``dispatcher.server.service``, which imports it), as it was
    # defined there: so tracebacks, reprs and pickles name it.
    __module__ = "dispatcher.server.service"


def check_main_thread(what: str) -> None:
    """:raises CannotRunHere: when called outside the main thread (*what* says from where)."""
    if threading.current_thread() is not threading.main_thread():
        raise CannotRunHere(
            f"{what} must be called from the main thread: a dispatcher service handles the"
            " stop signals (SIGTERM, SIGINT, SIGHUP), which only the main thread can. Call"
            " it from the main thread, or run the service as a process of its own"
            " (dispatcher-standalone)"
        )


def check_asyncio_loop_runs() -> None:
    """:raises CannotRunHere: when no asyncio event loop runs here (none, or trio's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise CannotRunHere(
            "a dispatcher service runs in an asyncio event loop only, and none runs"
            " here (under trio, say): run it in an asyncio loop, or with"
            " run_service() from the main thread of a process of its own"
        ) from None


def check_no_loop_runs() -> None:
    """:raises CannotRunHere: when an event loop runs here (``run_service()`` runs its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise CannotRunHere(
            "run_service() cannot be called inside a running event loop (it runs one of its"
            " own): there, `await Service(settings).run()`, with Service from"
            " dispatcher.server"
        )


@contextlib.contextmanager
def asyncio_named_as_the_library() -> Iterator[None]:
    """Name asyncio as the running async library for what the block starts.

    anyio asks sniffio, when it is installed, which library runs; under ``asyncio.run()``
    (not anyio's ``run()``), sniffio finds it from the current task only. The callbacks the
    service registers on the loop (the readers of the listening connection, of the workers'
    pipes) run outside any task: there anyio found no loop, and every notification the
    service read failed. Callbacks, tasks and threads started in the block copy its context,
    this name included; the caller's context is given back as it was.
    """
    try:
        import sniffio
    except ImportError:  # anyio then assumes asyncio wherever a loop runs
        yield
        return
    token = sniffio.current_async_library_cvar.set("asyncio")
    try:
        yield
    finally:
        sniffio.current_async_library_cvar.reset(token)
