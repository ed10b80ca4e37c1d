"""The error of a submission refused before anything is sent, naming the task."""

from __future__ import annotations

import re
from typing import Final

from dispatcher.publish.errors import InvalidSubmission


def invalid_submission(name: str, reason: str) -> InvalidSubmission:
    """The error of a submission of the task *name*, refused for *reason*."""
    # A name that is no task name may be empty or hold anything (a space, a line break, a
    # NUL): shown quoted, after words that say what it is.
    if type(name) is str and name.isprintable() and name and not _SPACE.search(name):
        return InvalidSubmission(f"cannot submit {name}: {reason}")
    return InvalidSubmission(f"cannot submit the task {name!r}: {reason}")


_SPACE: Final = re.compile(r"\s")
