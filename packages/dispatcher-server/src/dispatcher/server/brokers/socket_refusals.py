"""Why the socket broker cannot listen on its path, and what the operator should do.

One line, naming the path whole, the system's reason, and the setting to change
(``brokers.socket.path``) or what to fix around it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

SETTING = "brokers.socket.path"
"""The setting that names the socket's path."""


def socket_refusal(path: Path, exc: OSError) -> str:
    """The message of the refusal to listen on *path* (named whole) for *exc*."""
    whole = path.absolute()
    why = exc.strerror or str(exc)  # (not str(exc): it may name the path again)
    return f"cannot listen on socket {whole}: {why}: {_what_to_do(whole, exc.errno)}"


def _what_to_do(whole: Path, number: int | None) -> str:
    """What fixes the refusal of error *number* on *whole*."""
    folder = whole.parent
    if number == errno.ENOENT:
        return (
            f"the directory {folder} does not exist: create it, or set {SETTING} to a path"
            " in one that does"
        )
    if number in (errno.EACCES, errno.EPERM):
        return (
            f"this service's user (uid {os.geteuid()}) may not create files in {folder}: let"
            f" it, or set {SETTING} to a path in a directory it may write"
        )
    if number == errno.EROFS:
        return f"{folder} is on a read-only file system: set {SETTING} to a path on a writable one"
    if number == errno.EEXIST:
        return f"remove that file if it is not needed, or set {SETTING} to another path"
    if number == errno.EADDRINUSE:
        return f"stop that service, or give this one another {SETTING}"
    return f"set {SETTING} to another path"
