"""``dispatcherctl``'s exit statuses, and their list in its ``--help``."""

from __future__ import annotations

from typing import Final

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_ERROR_REPLY = 0, 1, 2, 3
"""Exit statuses of control commands: every expected service answered, without an error;
some did not answer (or none was found, or the database or socket could not be reached);
usage or config error (or the command could not be sent, or the durable queue's tables are
missing); a service answered with an error."""

EXIT_INTERRUPTED: Final = 130
"""Any command interrupted by Ctrl-C (as shells report SIGINT)."""

EXIT_BROKEN_PIPE: Final = 141
"""Any command whose reader went away before it was done (``| head``), as shells report
SIGPIPE."""

EXIT_STATUSES: Final = """exit status:
  0    every expected service answered, without an error
  1    a service did not answer, none is listening, or the database cannot be reached
  2    usage or config error (or the durable queue's tables not created yet)
  3    a service answered with an error
  130  interrupted (Ctrl-C)"""
"""The exit statuses, as ``dispatcherctl --help`` lists them."""
