"""The console scripts, ``dispatcherctl`` and ``dispatcher-standalone``.

Each says in one line what to install, and exits 2, when psycopg finds no libpq (the
``binary`` extra brings psycopg's own copy), rather than ending with psycopg's traceback
(``ImportError: no pq wrapper available``): ``dispatcherctl``'s exit status 1 would read
as a service that did not answer. Nothing is imported here before that is checked.
"""

from __future__ import annotations

from dispatcher.config.libpq import exit_without_libpq


def dispatcherctl() -> None:
    """``dispatcherctl``: :func:`dispatcher.server.ctl.entry_point`."""
    try:
        from dispatcher.server.ctl import entry_point
    except ImportError as exc:
        exit_without_libpq("dispatcherctl", exc)
        raise
    entry_point()


def dispatcher_standalone() -> None:
    """``dispatcher-standalone``: :func:`dispatcher.server.cli.entry_point`."""
    from dispatcher.server.cli import entry_point  # (which imports psycopg later, if needed)

    try:
        entry_point()
    except ImportError as exc:
        exit_without_libpq("dispatcher-standalone", exc)
        raise
