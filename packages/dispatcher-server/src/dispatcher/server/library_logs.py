"""What libraries log that the service silences: its own doing, not news to an operator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Final

from dispatcher.server.log_records import library_logger

_CANCELLATION_INTERRUPTED: Final = "query cancellation interrupted"


class OwnCancellations(logging.Filter):
    """Drops psycopg's warning that a ``CancelledError`` interrupted a query's cancellation.

    psycopg logs it when a task waiting for a statement is cancelled (it tries to cancel
    the statement on the server, and the cancellation interrupts that too), then closes the
    connection. In the service only the service cancels its tasks (at a stop, or when a
    start is refused), and it closes those connections anyway: the line would only make a
    clean stop look like trouble. An interruption by anything else is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """``False`` for the one warning above, ``True`` for any other record."""
        if not str(record.msg).startswith(_CANCELLATION_INTERRUPTED):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        # (psycopg names the exception's type; an instance is recognised too)
        return not any(
            arg == "CancelledError" or isinstance(arg, asyncio.CancelledError) for arg in args
        )


@contextlib.contextmanager
def quiet_own_cancellations() -> Iterator[None]:
    """Within the block, :class:`OwnCancellations` is on psycopg's logger.

    Taken off again when the block ends (if put on here): a service run in the application's
    own process leaves the application's loggers as they were.
    """
    psycopg_logger = library_logger("psycopg")
    if any(isinstance(f, OwnCancellations) for f in psycopg_logger.filters):
        yield
        return
    quieting = OwnCancellations()
    psycopg_logger.addFilter(quieting)
    try:
        yield
    finally:
        psycopg_logger.removeFilter(quieting)
