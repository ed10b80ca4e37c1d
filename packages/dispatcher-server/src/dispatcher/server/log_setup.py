"""Setting the process's logging up: the service's handler, a worker's own logger.

:func:`log_to` sends the process's records to a stream, escaped, unless the application
has handlers of its own; :func:`root_left_to_the_app` lets the application's code set its
logging up while it is imported; :func:`set_apart` keeps a worker's own logger out of the
application's config; :func:`lean_records` makes records cheaper in a process of ours.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TextIO

from dispatcher.server.log_handler import ServiceHandler
from dispatcher.server.log_records import EscapingFormatter


def log_to(stream: TextIO, level: int, fmt: str | logging.Formatter) -> None:
    """Send the process's log records to *stream*, every one escaped, unless the app has a say.

    The root logger gets a handler writing to *stream* with an
    :class:`~dispatcher.server.log_records.EscapingFormatter`, which also covers records of
    loggers that are not ours (libraries, task code) without changing them for the
    application's other handlers, and the level *level*. The handler an earlier call put
    there is replaced (a worker inherits the service's). *fmt* is its format string, or a
    formatter that escapes as it does (a JSON one).

    Handlers the application put on the root logger (Django's ``LOGGING``, a ``dictConfig``
    or ``basicConfig`` a task module runs when imported) are kept, and the root logger then
    gets no handler of ours: the application's config says how records are written, ours
    among them (escaped where they are made: see
    :func:`~dispatcher.server.log_records.get_logger`), and *level* is the level of the
    ``dispatcher`` loggers only.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ServiceHandler)]:
        root.removeHandler(handler)
        handler.close()
    if root.handlers:
        logging.getLogger("dispatcher").setLevel(level)
        return
    handler = ServiceHandler(stream)
    handler.setFormatter(as_formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


@contextlib.contextmanager
def root_left_to_the_app() -> Iterator[None]:
    """Within the block, the root logger has no handler of :func:`log_to`'s: the app's to set up.

    For importing the application's code (the task modules, ``worker.class``) in a process
    that has the service's handler already: the fork server, forked from the service's
    process once its logging was set up, and a worker. A ``basicConfig()`` run on import
    does nothing where the root logger has a handler; within the block it sets the app's
    logging up as in a process of its own. Records made meanwhile are still written by the
    service's handler (as :data:`logging.lastResort`, used while the root logger has none).

    When the block ends, the service's handler goes back on the root logger if that still
    has none; else the app's handlers stay, alone, and the level the root logger had is the
    level of the ``dispatcher`` loggers (as :func:`log_to` leaves them).
    """
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, ServiceHandler)]
    if not ours:
        yield
        return
    level = root.level
    for handler in ours:
        root.removeHandler(handler)
    last_resort = logging.lastResort
    logging.lastResort = ours[0]
    try:
        yield
    finally:
        logging.lastResort = last_resort
        if root.handlers:
            logging.getLogger("dispatcher").setLevel(level)
            for handler in ours:
                handler.close()
        else:
            for handler in ours:
                root.addHandler(handler)


def as_formatter(fmt: str | logging.Formatter) -> logging.Formatter:
    """*fmt* if it is a formatter, else an escaping formatter of the format string *fmt*."""
    return fmt if isinstance(fmt, logging.Formatter) else EscapingFormatter(fmt)


def set_apart(name: str, stream: TextIO, level: int, fmt: str | logging.Formatter) -> None:
    """Have the logger *name* write to *stream* alone, whatever logging config follows.

    For a worker's own log, in the process where task code runs: the logger gets a handler
    of its own, and is taken out of the logging module's registry (given a manager of its
    own), so that neither :func:`logging.config.dictConfig` (which disables every logger it
    finds unless told not to, as Django's ``LOGGING`` does), nor ``basicConfig(force=True)``
    (which replaces the root logger's handlers), nor :func:`logging.disable` reaches it.
    ``getLogger(name)`` gives a new logger from then on: the application's.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(as_formatter(fmt))
    logger = logging.getLogger(name)
    manager = logging.Manager(logging.root)
    manager.loggerDict[name] = logger
    logging.Logger.manager.loggerDict.pop(name, None)
    logger.manager = manager
    logger.handlers = [handler]
    logger.propagate = False
    logger.disabled = False
    logger.setLevel(level)  # (clears its cache of enabled levels too)


@contextlib.contextmanager
def lean_records() -> Iterator[None]:
    """Within the block, log records do not look for the file, line and function that made them.

    Finding them is most of what a record costs beyond its formatting (the logging HOWTO's
    "Optimization"), and the service logs a line per task. For a process the service owns,
    which runs no code of the application's and shows no such field: the main process of
    ``dispatcher-standalone``, once its fork server is forked (never a process the service is
    embedded in, nor a worker). A record still has every attribute a format may show
    (``pathname`` is ``(unknown file)``, ``lineno`` 0, ``funcName`` ``(unknown function)``;
    thread and process as always). What was there is put back when the block ends.
    """
    saved = logging._srcfile
    logging._srcfile = None
    try:
        yield
    finally:
        logging._srcfile = saved
