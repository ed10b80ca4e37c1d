"""Tasks for the service benchmark (imported by its workers)."""

import os
import time

from dispatcher.publish import task


@task()
def tick(path: str) -> None:
    """Append one byte to *path*: the benchmark counts bytes to know how many ran."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


@task()
def stamp(path: str, sent: float) -> None:
    """Record how long ago (publisher's clock) the message was sent."""
    started = time.time()
    with open(path, "a") as out:
        out.write(f"{started - sent}\n")


@task()
def noop() -> None:
    """Do nothing: the soak benchmark counts these through the service's ``status``."""


@task()
def tick_sized(path: str, padding: str) -> None:
    """:func:`tick`, with a *padding* argument that makes the message as large as wanted."""
    tick(path)
