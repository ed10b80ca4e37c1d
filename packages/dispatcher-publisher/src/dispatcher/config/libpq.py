"""Saying what to install when psycopg finds no libpq, the PostgreSQL client library.

psycopg needs libpq: the system's, or its own copy in the ``psycopg-binary`` wheel (the
``binary`` extra). Without either it raises ``ImportError: no pq wrapper available``, with
a list of attempts that names neither the extra nor this project; the entry points (the
command-line tools, ``import dispatcher.publish``) say what to install instead. Imports
nothing of psycopg itself, so that it can say so.
"""

from __future__ import annotations

import sys
from typing import Final, NoReturn

from dispatcher.schema import DispatcherError

NO_LIBPQ: Final = (
    "psycopg cannot load libpq, the PostgreSQL client library: "
    'pip install "dispatcher-publisher[binary]" (psycopg\'s own copy of it), '
    "or install the system's libpq (libpq5 on Debian and Ubuntu, libpq on Fedora and Alpine, "
    "brew install libpq on macOS, PostgreSQL's installer on Windows with its bin folder on PATH)"
)
"""What to do when psycopg finds no libpq."""


class LibpqMissing(DispatcherError, ImportError):
    """psycopg cannot be imported: it finds no libpq (the message says what to install)."""


def missing_libpq(exc: BaseException) -> bool:
    """Whether *exc* is psycopg's failure to find a libpq (or this module's word for it)."""
    if isinstance(exc, LibpqMissing):
        return True
    if not isinstance(exc, ImportError):
        return False
    traceback = exc.__traceback__
    while traceback is not None:  # raised by psycopg.pq as it looks for an implementation
        if traceback.tb_frame.f_globals.get("__name__") == "psycopg.pq":
            return True
        traceback = traceback.tb_next
    return False


def psycopg_failure(exc: BaseException) -> str:
    """:data:`NO_LIBPQ`, with the first line of what psycopg said (*exc*)."""
    said = str(exc).strip().splitlines()
    return f"{NO_LIBPQ} (psycopg: {said[0].rstrip('.')})" if said else NO_LIBPQ


def require_libpq() -> None:
    """Import psycopg, or say what to install when it finds no libpq.

    :raises LibpqMissing: when psycopg finds no libpq (or the implementation
        ``$PSYCOPG_IMPL`` asks for is not installed).
    """
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        if not missing_libpq(exc):
            raise
        raise LibpqMissing(psycopg_failure(exc)) from exc


def exit_without_libpq(command: str, exc: BaseException) -> None:
    """Exit with status 2 saying what to install, in one line, if *exc* means no libpq.

    Else return (the caller raises *exc* again).
    """
    if missing_libpq(exc):
        _exit(command, exc)


def _exit(command: str, exc: BaseException) -> NoReturn:
    text = str(exc) if isinstance(exc, LibpqMissing) else psycopg_failure(exc)
    print(f"{command}: {text}", file=sys.stderr)
    sys.exit(2)
