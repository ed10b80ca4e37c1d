"""Our ``dispatcherctl`` run in the test's own process: its exit status, stdout and stderr.

A child process per command costs a second or more on a loaded machine (mostly Python
starting and importing), so a test running a dozen of them outlived its time limit; the
command's own code is the same here. What only a process shows (the console script's
entry point: a closed pipe, the terminal's encoding, Ctrl-C, the status ``sys.exit`` gives)
is for the tests that start one.

The config in force in the test's process (a test's own ``setup()``) is put back afterwards,
and the connections the command opened are closed.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from dispatcher.config import install, reset
from dispatcher.config.current import in_force
from dispatcher.publish import close_connections
from dispatcher.server.ctl import main


def dispatcherctl(
    config: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``dispatcherctl ARGS --config CONFIG`` here, with *env* added to the environment
    while it runs; what a child would have given (``returncode``, ``stdout``, ``stderr``)."""
    argv = [*args, "--config", str(config)]
    before = in_force()
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            _environment(env or {}),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                status = main(argv)
            except SystemExit as exc:  # a usage error, as argparse exits
                status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        close_connections()
        if before is None:
            reset()
        else:
            install(before)
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _environment(added: Mapping[str, str]) -> Iterator[None]:
    """*added* in ``os.environ`` for the block; the values before put back after it."""
    before = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
