"""Per-task output capture, in a subprocess of its own (it takes over fds 1 and 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from dispatcher.server.log_text import MAX_LOGGED_CHARS
from support.service import wait_until

SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys
    from dispatcher.server.capture import OutputCapture
    from dispatcher.server.log_setup import log_to

    capture = OutputCapture(int(sys.argv[1]))
    log_to(capture.start(), logging.INFO, "LOG %(message)s")
    print("imported")
    capture.begin("app.first", "uuid-1")
    print("from print", flush=False)
    os.write(1, b"from fd 1\\n")
    os.write(2, b"from fd 2 \\x00\\x1b[2J\\n")
    subprocess.run(["echo", "from a child"], check=True)
    capture.end()
    print("between")
    capture.begin("app.second", "uuid-2\\nCRITICAL forged")
    for _ in range(64):
        sys.stdout.write("y" * 65535 + "\\n")
    capture.end()
    print("at exit")
    capture.close()
    os.write(1, b"after close\\n")
    """
)


def _run(cap: int) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cap)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == b""
    return result.stderr.decode().splitlines()


def test_output_is_logged_per_task_with_its_name_and_uuid() -> None:
    lines = _run(cap=200)
    assert all(line.startswith("LOG ") for line in lines), lines
    assert lines[:6] == [
        "LOG worker output [between tasks] imported",
        "LOG task output [app.first uuid-1] from print",
        "LOG task output [app.first uuid-1] from fd 1",
        "LOG task output [app.first uuid-1] from fd 2 \\x00\\x1b[2J",
        "LOG task output [app.first uuid-1] from a child",
        "LOG worker output [between tasks] between",
    ]
    assert lines[-1] == "LOG worker output [between tasks] at exit"


def test_output_over_the_cap_is_counted_and_dropped() -> None:
    lines = _run(cap=200)
    second = [line for line in lines if "app.second" in line]
    prefix = "LOG task output [app.second uuid-2\\nCRITICAL forged]"
    assert second == [f"{prefix} {'y' * 200}", f"{prefix}: {64 * 65536 - 200} more bytes dropped"]


def test_a_long_line_is_logged_in_pieces() -> None:
    lines = _run(cap=1000)
    pieces = [line for line in lines if "app.second" in line and "dropped" not in line]
    full, rest = divmod(1000, MAX_LOGGED_CHARS)
    expected = [MAX_LOGGED_CHARS] * full + ([rest] if rest else [])
    assert [len(line.rsplit(" ", 1)[1]) for line in pieces] == expected


def test_a_cap_of_zero_logs_only_the_count() -> None:
    lines = _run(cap=0)
    assert lines == [
        "LOG worker output [between tasks]: 9 more bytes dropped",
        "LOG task output [app.first uuid-1]: 50 more bytes dropped",
        "LOG worker output [between tasks]: 8 more bytes dropped",
        f"LOG task output [app.second uuid-2\\nCRITICAL forged]: {64 * 65536} more bytes dropped",
        "LOG worker output [between tasks]: 8 more bytes dropped",
    ]


FD_SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    from dispatcher.server.capture import OutputCapture
    from dispatcher.server.log_setup import log_to

    capture = OutputCapture(4096)
    log_to(capture.start(), logging.INFO, "LOG %(message)s")
    capture.begin("app.redirects", "uuid-1")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    sys.stdout = open(os.devnull, "w")
    capture.end()
    capture.begin("app.says", "uuid-2")
    print("said", flush=True)
    os.write(2, b"said on fd 2\\n")
    capture.end()
    capture.begin("app.closes", "uuid-3")
    os.close(0)
    os.close(2)
    capture.end()
    capture.begin("app.says", "uuid-4")
    os.write(2, b"said on fd 2 again\\n")
    os.read(0, 1)  # (end of file: /dev/null, as the fork server set it up)
    capture.end()
    capture.close()
    """
)


def test_fds_a_task_closes_or_redirects_are_put_back_for_the_next_tasks() -> None:
    """``os.dup2(f, 1)`` or ``os.close(2)`` in a task broke every later task of its worker."""
    with open("/dev/null") as null:
        result = subprocess.run(
            [sys.executable, "-c", FD_SCRIPT], stdin=null, capture_output=True, timeout=30
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().splitlines() == [
        "LOG task app.redirects (uuid uuid-1) closed or replaced the worker's standard output "
        "(fd 1), standard error (fd 2), sys.stdout: put back as they were, for the tasks that "
        "follow (said once per worker)",
        "LOG task output [app.says uuid-2] said",
        "LOG task output [app.says uuid-2] said on fd 2",
        "LOG task output [app.says uuid-4] said on fd 2 again",
    ]


KEPT_SCRIPT = textwrap.dedent(
    """
    import io, logging, os, sys
    from dispatcher.server.capture import OutputCapture
    from dispatcher.server.log_setup import log_to

    capture = OutputCapture(4096)
    log_to(capture.start(), logging.INFO, "LOG %(message)s")
    # A worker hook wraps sys.stdout (line-buffered), before the worker says it is ready.
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)
    capture.keep_streams()
    capture.begin("app.prints", "uuid-1")
    print("through the hook's stream")
    capture.end()
    print(sys.stdout.line_buffering, file=sys.stderr)
    capture.close()
    """
)


def test_streams_a_worker_hook_set_up_are_kept_for_its_tasks() -> None:
    with open("/dev/null") as null:
        result = subprocess.run(
            [sys.executable, "-c", KEPT_SCRIPT], stdin=null, capture_output=True, timeout=30
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().splitlines() == [
        "LOG task output [app.prints uuid-1] through the hook's stream",
        "LOG worker output [between tasks] True",
    ]


UNREAD_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys, time
    from dispatcher.server.capture import OutputCapture
    from dispatcher.server.log_setup import log_to

    capture = OutputCapture(65536)
    log_to(capture.start(), logging.INFO, "LOG %(message)s")
    began = time.monotonic()
    for n in range(40):  # each task's output logged: 60 kB, 240 lines
        capture.begin("app.loud", f"uuid-{n}")
        sys.stdout.write(("y" * 999 + "\\\\n") * 60)
        capture.end()
        capture.log_ended()
    took = time.monotonic() - began
    with open(sys.argv[1], "w") as report:
        json.dump({"took": took, "dropped": capture.lines_dropped()}, report)
    capture.close()
    """
)


def test_a_log_nobody_reads_holds_no_task(tmp_path: Path) -> None:
    """Its tasks' output, logged to a pipe nobody read, held the worker once the pipe was full."""
    report = tmp_path / "report.json"
    process = subprocess.Popen(
        [sys.executable, "-c", UNREAD_SCRIPT, str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: report.exists() and report.stat().st_size, timeout=20)
        said = json.loads(report.read_text())
        out, _ = process.communicate(timeout=20)  # read at last: what waits is written
    finally:
        process.kill()
        process.wait()
    assert said["took"] < 5
    assert said["dropped"] > 0
    lines = out.decode().splitlines()
    notices = [line for line in lines if "log lines dropped" in line]
    assert notices == [
        f"WARNING dispatcher.worker: {said['dropped']} log lines dropped: the log's reader fell "
        "behind (more than 1310720 characters waited)"
    ]
    assert lines[0] == "LOG task output [app.loud uuid-0] " + "y" * MAX_LOGGED_CHARS
    assert lines[-1] == notices[0]  # where they were: the last lines were dropped


INTERRUPTED_SCRIPT = textwrap.dedent(
    """
    import logging, os
    from dispatcher.server.capture import OutputCapture
    from dispatcher.server.log_setup import log_to

    class Interrupted(BaseException):
        pass

    class Stopper(logging.Handler):
        # Stands for the SIGTERM that comes while the worker logs line 3: its handler
        # logs what is left (capture.salvage() calls log_ended()), then the worker ends.
        stopped = False

        def emit(self, record):
            if record.getMessage().endswith("line 3") and not self.stopped:
                self.stopped = True
                capture.log_ended()
                raise Interrupted

    capture = OutputCapture(42)  # (six lines of seven bytes)
    log_to(capture.start(), logging.INFO, "LOG %(message)s")
    logging.getLogger("dispatcher.worker").addHandler(Stopper())
    capture.begin("app.task", "u-1")
    os.write(1, b"".join(b"line %d\\n" % number for number in range(6)) + b"x" * 10)
    capture.end()
    try:
        capture.log_ended()  # (once the task's end is reported)
    except Interrupted:
        pass
    capture.close()
    """
)


def test_output_whose_logging_a_sigterm_interrupts_is_logged_whole_by_its_handler() -> None:
    # The worker logs a task's output after reporting its end; stopped meanwhile (SIGTERM),
    # its handler logs what is left: every line once, the interrupted one included.
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_SCRIPT], capture_output=True, timeout=30, check=True
    )
    lines = [
        line.removeprefix("LOG task output [app.task u-1]")
        for line in result.stderr.decode().splitlines()
    ]
    assert lines == [f" line {n}" for n in range(6)] + [": 10 more bytes dropped"]


INTERRUPTED_LONG_LINE_SCRIPT = textwrap.dedent(
    """
    import logging, os
    from dispatcher.server.capture import OutputCapture
    from dispatcher.server.log_setup import log_to
    from dispatcher.server.log_text import MAX_LOGGED_CHARS

    class Interrupted(BaseException):
        pass

    class Stopper(logging.Handler):
        # Stands for the SIGTERM that comes while the worker logs the second piece of a
        # long line: its handler logs what is left, then the worker ends.
        stopped = False

        def emit(self, record):
            if record.getMessage().endswith("b") and not self.stopped:
                self.stopped = True
                capture.log_ended()
                raise Interrupted

    capture = OutputCapture(10_000)
    log_to(capture.start(), logging.INFO, "LOG %(message)s")
    logging.getLogger("dispatcher.worker").addHandler(Stopper())
    capture.begin("app.task", "u-1")
    line = b"a" * MAX_LOGGED_CHARS + b"b" * MAX_LOGGED_CHARS + b"c" * 10
    os.write(1, line + b"\\nlast line\\n")
    capture.end()
    try:
        capture.log_ended()  # (once the task's end is reported)
    except Interrupted:
        pass
    capture.close()
    """
)


def test_a_long_line_whose_logging_a_sigterm_interrupts_is_logged_in_pieces_each_once() -> None:
    # Interrupted in the middle of a line longer than a log line takes, the handler goes on
    # from the piece it was at: the pieces before it were logged already.
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_LONG_LINE_SCRIPT],
        capture_output=True,
        timeout=30,
        check=True,
    )
    lines = [
        line.removeprefix("LOG task output [app.task u-1] ")
        for line in result.stderr.decode().splitlines()
    ]
    assert lines == ["a" * MAX_LOGGED_CHARS, "b" * MAX_LOGGED_CHARS, "c" * 10, "last line"]
