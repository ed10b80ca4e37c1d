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


DRAIN_SCRIPT = textwrap.dedent(
    """
    import logging, os, time
    from dispatcher.server.log_background import BackgroundStream, drain_log_streams

    _, unread = os.pipe()  # a log's reader that does not read
    streams = [
        BackgroundStream(os.dup(unread), logging.Formatter(), "dispatcher.worker", 1 << 20)
        for _ in range(4)  # (a worker's copies of its standard error and output, and more)
    ]
    for stream in streams:
        for _ in range(2000):  # more than the pipe holds
            stream.write("x" * 100 + "\\n")
    start = time.monotonic()
    drain_log_streams(1.0)
    print(time.monotonic() - start, flush=True)
    os._exit(0)
    """
)


def test_draining_the_streams_waits_for_the_reader_the_time_given_in_all_not_for_each() -> None:
    """A stopped worker has half a second before SIGKILL, however many streams it has."""
    result = subprocess.run(
        [sys.executable, "-c", DRAIN_SCRIPT], capture_output=True, timeout=30, check=True
    )
    waited = float(result.stdout)
    assert 1.0 <= waited < 2.5  # (one second for each of the four streams: 4 s)
