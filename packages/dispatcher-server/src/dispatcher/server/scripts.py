"""The console scripts, ``dispatcherctl`` and ``dispatcher-standalone``.

Each says in one line what to install, and exits 2, when psycopg finds no libpq (the
``binary`` extra brings psycopg's own copy), rather than ending with psycopg's traceback
(``ImportError: no pq wrapper available``): ``dispatcherctl``'s exit status 1 would read
as a service that did not answer. Nothing is imported here before that is checked.

``dispatcher-standalone`` likewise says in one line, and exits 2, when this host cannot run
the service (not Linux 5.3 or later: :mod:`dispatcher.server.host`), where its modules would
fail to import; ``--help`` and ``--version`` still answer there.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

EXIT_USAGE = 2


def dispatcherctl() -> None:
    """``dispatcherctl``: :func:`dispatcher.server.ctl.entry_point`."""
    try:
        from dispatcher.server.ctl import entry_point
    except ImportError as exc:
        from dispatcher.config.libpq import exit_without_libpq

        exit_without_libpq("dispatcherctl", exc)
        raise
    entry_point()


def dispatcher_standalone() -> None:
    """``dispatcher-standalone``: :func:`dispatcher.server.cli.entry_point`.

    Imports nothing before the command holds its stop signals (see
    :mod:`dispatcher.server.early_signals`), except on a host that is not Linux, where the
    command refuses at once; the kernel's part of the check (``pidfd_open``) is made by the
    command itself, with the signals held.
    """
    if not sys.platform.startswith("linux"):
        refuse_unsupported_host(sys.argv[1:])
    from dispatcher.server.cli import entry_point  # (which imports psycopg later, if needed)

    try:
        entry_point()
    except ImportError as exc:
        from dispatcher.config.libpq import exit_without_libpq

        exit_without_libpq("dispatcher-standalone", exc)
        raise


def refuse_unsupported_host(argv: Sequence[str]) -> None:
    """Exit with status 2, saying why, when this host cannot run the service.

    The command line *argv* is read first: ``--help`` and ``--version`` answer (exit 0),
    and a wrong one is said as such, on any host.
    """
    from dispatcher.server.host import unsupported_host

    why = unsupported_host()
    if why is None:
        return
    from dispatcher.server.cli_arguments import parser

    parser().parse_args(argv)
    print(f"dispatcher-standalone: {why}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
