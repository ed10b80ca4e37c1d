"""A task module whose application sets its logging up when imported, as apps do.

A ``dictConfig`` as Django's ``LOGGING`` or an app's start-up makes it: the root logger
writes to standard error in the app's own format (Django's "verbose" one, with the process
and thread ids), the logger ``app_logging`` to standard output. The tasks log through them,
then wait for the test's word (a file), so that the test sees whether the records reached
the service's log while the task still runs.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import time
from typing import Any, Final

from dispatcher.publish import task

ROOT_FORMAT: Final = "APP-ROOT {levelname} pid={process:d} thread={thread:d} {name}: {message}"
OUT_FORMAT: Final = "APP-OUT %(levelname)s %(name)s: %(message)s"
LATE_FORMAT: Final = "APP-LATE %(levelname)s %(name)s: %(message)s"

logging.config.dictConfig(
    {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "verbose": {"format": ROOT_FORMAT, "style": "{"},
            "out": {"format": OUT_FORMAT},
        },
        "handlers": {
            "err": {"class": "logging.StreamHandler", "formatter": "verbose"},
            "out": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "out",
            },
        },
        "loggers": {"app_logging": {"handlers": ["out"], "level": "INFO", "propagate": False}},
        "root": {"handlers": ["err"], "level": "INFO"},
    }
)

WAIT: Final = 20.0
"""Longest a task waits for the test's word."""


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


def _wait_for(condition: Any) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _wait_for_go(path: str) -> None:
    _wait_for(lambda: os.path.exists(path + ".go"))


@task()
def log_then_wait(path: str, text: str) -> None:
    """Log *text* through the root logger and the app's logger, print it, then wait."""
    logging.getLogger("other.lib").warning("root: %s", text)
    logging.getLogger("app_logging.tasks").error("out: %s", text)
    print(f"printed: {text}")
    _record(path, event="logged")
    _wait_for_go(path)


@task()
def log_a_forgery(path: str, text: str) -> None:
    """Log *text* (which holds line breaks) and an exception's traceback, as the app formats them."""
    logging.getLogger("other.lib").warning("forged: %s", text)
    try:
        raise ValueError(text)
    except ValueError:
        logging.getLogger("app_logging.tasks").exception("failed")
    _record(path, event="logged")


def _late_logger() -> logging.Logger:
    """A logger with a handler of its own to standard error, made when first asked for (as a
    module imported lazily, in a task, makes one)."""
    late = logging.getLogger("app_late")
    if not late.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LATE_FORMAT))
        late.addHandler(handler)
        late.propagate = False
        late.setLevel(logging.INFO)
    return late


@task()
def make_a_handler_then_wait(path: str, text: str) -> None:
    """Make a handler to standard error in this task, log through it, then wait.

    Once its first line has been written, it logs another, once the service has pointed
    the handler at its log (the handler's stream is no longer ``sys.stderr``).
    """
    late = _late_logger()
    late.warning("first: %s", text)
    (handler,) = late.handlers
    redirected = _wait_for(lambda: getattr(handler, "stream", None) is not sys.stderr)
    late.warning("then: %s (redirected: %s)", text, redirected)
    _record(path, event="logged")
    _wait_for_go(path)


@task()
def log_late_then_wait(path: str, text: str) -> None:
    """Log through the handler :func:`make_a_handler_then_wait` made, then wait."""
    _late_logger().warning("later: %s", text)
    _record(path, event="logged")
    _wait_for_go(path)


@task()
def alternate(steps: int) -> None:
    """Log *steps* lines, in turn through the app's handler to standard output and its root
    handler to standard error, each saying its number (``step N``)."""
    out, err = logging.getLogger("app_logging.tasks"), logging.getLogger("other.lib")
    for number in range(0, steps, 2):
        out.info("step %d", number)
        err.warning("step %d", number + 1)
