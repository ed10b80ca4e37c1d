"""Log lines written by a thread: a reader that stops reading holds no caller, only lines."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import TextIO

import pytest

from dispatcher.server.log_handler import (
    is_service_handler,
    log_lines_dropped,
    logs_written_in_background,
)
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_setup import log_to
from dispatcher.server.log_writer import LineWriter
from dispatcher.server.logformat import TEXT_FORMAT, JsonFormatter


class Pipe:
    """A pipe of one page, read only when the test says (then by a thread, until closed)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, 4096)
        self.data = bytearray()
        self._reader: threading.Thread | None = None

    def read_from_now_on(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(self.read_fd, 1 << 16):
                self.data += chunk

    def close_writing(self) -> None:
        """Close the writing end: the reader then reads to the end."""
        os.close(self.write_fd)
        self.write_fd = -1

    def text(self) -> str:
        """What was read until the writing end closed."""
        assert self._reader is not None
        self._reader.join(10)
        return self.data.decode()

    def close(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
        if self._reader is not None:
            self._reader.join(10)
        os.close(self.read_fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    made = Pipe()
    yield made
    made.close()


def notice(number: int) -> str:
    return f"[{number} dropped]\n"


def test_lines_are_written_in_their_order(pipe: Pipe) -> None:
    pipe.read_from_now_on()
    writer = LineWriter(pipe.write_fd, notice)
    writer.start()
    lines = [f"line {n} é\n" for n in range(5000)]
    for line in lines:
        writer.put(line)
    assert writer.stop(5)
    pipe.close_writing()
    assert pipe.text() == "".join(lines)
    assert writer.dropped == 0


def test_lines_that_do_not_fit_are_dropped_and_then_counted_where_they_were(pipe: Pipe) -> None:
    writer = LineWriter(pipe.write_fd, notice, limit=10_000)  # (the pipe holds 4096 bytes)
    writer.start()
    started = time.monotonic()
    for n in range(5000):
        writer.put(f"early {n:04d}\n")
    assert time.monotonic() - started < 1  # never waits for the reader
    assert writer.dropped > 0
    assert not writer.drain(0.05)  # nobody reads

    pipe.read_from_now_on()
    assert writer.drain(5)
    writer.put("late\n")
    assert writer.stop(5)
    pipe.close_writing()
    *lines, late, end = pipe.text().split("\n")
    assert (late, end) == ("late", "")
    assert lines[-1].endswith(" dropped]")
    # Lines whole, in order, each run of dropped ones counted where it was (one run, or more
    # when the writing thread made room while lines were still put).
    expected, counted = 0, 0
    for line in lines:
        if line.startswith("["):
            dropped = int(line.removeprefix("[").removesuffix(" dropped]"))
            expected, counted = expected + dropped, counted + dropped
        else:
            assert line == f"early {expected:04d}"
            expected += 1
    assert expected == 5000
    assert counted == writer.dropped


def test_a_drain_with_nobody_reading_is_bounded_and_the_next_one_does_not_wait(
    pipe: Pipe,
) -> None:
    writer = LineWriter(pipe.write_fd, notice)
    writer.start()
    for _ in range(100):
        writer.put("x" * 1000 + "\n")  # more than the pipe holds
    started = time.monotonic()
    assert not writer.drain(0.2)
    assert 0.2 <= time.monotonic() - started < 2
    started = time.monotonic()
    assert not writer.stop(5)  # no write ended since: it gives up at once
    assert time.monotonic() - started < 0.5
    pipe.read_from_now_on()  # the thread goes on: what waited is written once read
    assert writer.stop(5)
    pipe.close_writing()
    assert pipe.text() == ("x" * 1000 + "\n") * 100


@pytest.fixture
def root_saved() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = []  # (pytest's own: log_to keeps an application's handlers)
    try:
        yield
    finally:
        for handler in root.handlers:
            if is_service_handler(handler):
                handler.close()
        root.handlers[:], level = saved
        root.setLevel(level)


def stream_of(pipe: Pipe) -> TextIO:
    logging.getLogger().handlers[:] = []  # (pytest's own, added since: log_to would keep them)
    return open(pipe.write_fd, "w", encoding="utf-8", closefd=False, buffering=1)


@pytest.mark.usefixtures("root_saved")
def test_the_service_handler_writes_from_a_thread_while_the_service_runs(pipe: Pipe) -> None:
    stream = stream_of(pipe)
    log_to(stream, logging.INFO, TEXT_FORMAT)
    logger = get_logger("dispatcher.test_log_writer")
    logger.info("before: written as it comes")
    dropped_before = log_lines_dropped()
    with logs_written_in_background():
        started = time.monotonic()
        for n in range(6000):  # 1.5 Mi characters: more than wait (1 Mi), with no reader
            logger.info("line %05d %s", n, "y" * 230)
        assert time.monotonic() - started < 5
        dropped = log_lines_dropped() - dropped_before
        assert dropped > 0
        pipe.read_from_now_on()
    logger.warning("after: written as it comes")  # (the block wrote what waited first)
    pipe.close_writing()
    lines = pipe.text().splitlines()
    pattern = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)$")
    parsed = [pattern.match(line).groups() for line in lines]  # type: ignore[union-attr]
    assert parsed[0] == ("INFO", "dispatcher.test_log_writer", "before: written as it comes")
    assert parsed[-1] == ("WARNING", "dispatcher.test_log_writer", "after: written as it comes")
    kept = [message for level, name, message in parsed[1:-2]]
    assert kept == [f"line {n:05d} {'y' * 230}" for n in range(len(kept))]
    assert parsed[-2] == (
        "WARNING",
        "dispatcher.service",
        f"{dropped} log lines dropped: the log's reader fell behind "
        "(more than 1048576 characters waited)",
    )
    assert len(kept) + dropped == 6000


@pytest.mark.usefixtures("root_saved")
def test_in_json_the_line_saying_what_was_dropped_has_its_event(pipe: Pipe) -> None:
    log_to(stream_of(pipe), logging.INFO, JsonFormatter())
    logger = get_logger("dispatcher.test_log_writer")
    with logs_written_in_background():
        for n in range(4000):
            logger.info("line %05d %s", n, "z" * 230, extra={"dispatcher_event": "task_finished"})
        pipe.read_from_now_on()
    pipe.close_writing()
    entries = [json.loads(line) for line in pipe.text().splitlines()]
    said = entries[-1]
    assert said["dispatcher_event"] == "log_lines_dropped"
    assert said["level"] == "WARNING"
    assert said["logger"] == "dispatcher.service"
    assert re.fullmatch(r"\d+ log lines dropped: .*", said["message"])
    assert {entry["dispatcher_event"] for entry in entries[:-1]} == {"task_finished"}
