"""The stop signals while services run, and the application's handlers of them given back.

A service may run in the application's own process (``run_service()``) or loop (``await
Service(settings).run()``). While one runs, the loop's handler of each stop signal hands
the signal to every service running in that loop (so one SIGTERM stops them all); once
the last one ends, the handlers the process had before are back: the Python-level ones
(``signal.signal``) and the loop's own (``loop.add_signal_handler``). asyncio's
``remove_signal_handler`` alone would leave the defaults instead, so that the
application's next SIGTERM would kill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from dispatcher.server.early_signals import STOP_SIGNALS

Receiver = Callable[[signal.Signals], None]
"""What a service is handed each stop signal with (in the loop, not in a signal handler)."""


class _Installed:
    """The loop's handlers of the stop signals, and what was there before them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.receivers: list[Receiver] = []
        self.handlers = {number: signal.getsignal(number) for number in STOP_SIGNALS}
        """The Python-level handlers, as ``signal.getsignal`` gives them."""
        self.loop_handlers = {number: _loop_handler(loop, number) for number in STOP_SIGNALS}
        """The loop's own handlers (``add_signal_handler``), where the loop tells."""
        installed: list[signal.Signals] = []
        try:
            for number in sorted(STOP_SIGNALS):
                loop.add_signal_handler(number, self._deliver, number)
                installed.append(number)
        except BaseException:
            self.restore(installed)
            raise

    def _deliver(self, number: signal.Signals) -> None:
        for receiver in list(self.receivers):
            receiver(number)

    def restore(self, numbers: Any = STOP_SIGNALS) -> None:
        """Put back, for each of *numbers*, the handlers that were there before."""
        for number in numbers:
            self.loop.remove_signal_handler(number)
            previous = self.loop_handlers[number]
            if previous is not None and not self.loop.is_closed():
                callback, args = previous
                self.loop.add_signal_handler(number, callback, *args)
                continue
            handler = self.handlers[number]
            if handler is not None:  # (None: not set from Python, nothing to put back)
                signal.signal(number, handler)


_installed: _Installed | None = None


@contextlib.contextmanager
def receiving_stop_signals(receiver: Receiver) -> Iterator[None]:
    """Hand *receiver* each stop signal that comes while the block runs, in the running loop.

    Must be entered in the main thread, with an asyncio loop running.
    """
    global _installed
    loop = asyncio.get_running_loop()
    if _installed is None or _installed.loop is not loop:
        # (Another loop's: one that ended without its services' ends running. Its
        # handlers went with it.)
        _installed = _Installed(loop)
    installed = _installed
    installed.receivers.append(receiver)
    try:
        yield
    finally:
        installed.receivers.remove(receiver)
        if not installed.receivers and _installed is installed:
            _installed = None
            installed.restore()


def _loop_handler(
    loop: asyncio.AbstractEventLoop, number: signal.Signals
) -> tuple[Callable[..., object], tuple[Any, ...]] | None:
    """The callback (and its arguments) *loop* runs on signal *number*, if it has one.

    asyncio's loops keep them in a private table; another loop may not tell (then ``None``,
    and the Python-level handler is what is put back).
    """
    handlers = getattr(loop, "_signal_handlers", None)
    handle = handlers.get(number) if isinstance(handlers, dict) else None
    callback = getattr(handle, "_callback", None)
    args = getattr(handle, "_args", None)
    if callback is None or not isinstance(args, tuple):
        return None
    return callback, args
