"""A worker's log streams: written by a thread of their own, at once in a forked child."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import logging, os
    from dispatcher.server.log_background import BackgroundStream, drain_log_streams

    stream = BackgroundStream(os.dup(1), logging.Formatter(), "dispatcher.worker", 1000)
    stream.write("from the worker\\n")
    pid = os.fork()
    if pid == 0:  # a task's child: no writing thread here, and it ends with os._exit()
        stream.write("from a forked child\\n")
        os._exit(0)
    os.waitpid(pid, 0)
    drain_log_streams(5)
    stream.write("from the worker again\\n")
    drain_log_streams(5)
    print(stream.dropped, flush=True)
    """
)


def test_a_forked_child_writes_at_once_and_the_parent_through_its_thread() -> None:
    """The child's line would wait for a thread that is not in it, and be lost at its exit."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, timeout=30, check=True
    )
    assert sorted(result.stdout.decode().splitlines()[:2]) == [
        "from a forked child",
        "from the worker",
    ]
    assert result.stdout.decode().splitlines()[2:] == ["from the worker again", "0"]
