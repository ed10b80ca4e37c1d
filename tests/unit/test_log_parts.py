"""Log lines keep their own words and every valid name whole; logging set up as the app left it.

- A :class:`Phrase` (an argument made of several values: a list of jobs) cuts each value
  alone, never its words nor the values after a long one.
- :func:`log_to` keeps the handlers the application put on the root logger.
- :func:`lean_records` leaves every attribute a format may show, and puts logging back.
- :class:`HandlerStreams` points the application's handlers writing to fds 1 and 2 at the
  log, through an :class:`EscapingStream`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest

from dispatcher.schema.resources import load_schema
from dispatcher.server.jobs import Job, listed
from dispatcher.server.log_arguments import Phrase, named_list
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_setup import lean_records, log_to
from dispatcher.server.log_streams import EscapingStream, HandlerStreams
from dispatcher.server.log_text import MAX_LOGGED_CHARS

FORGED = "x\nCRITICAL dispatcher.service: FORGED LINE"
LONGEST_NAME = "app.tasks." + "n" * 245


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """A logger from get_logger, writing to a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = get_logger("dispatcher.test_log_parts")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)


def test_the_longest_valid_name_and_uuid_are_logged_whole(log: io.StringIO) -> None:
    schema = load_schema("task-message")
    longest = (schema["$defs"]["task_name"]["maxLength"], schema["properties"]["uuid"]["maxLength"])
    assert len(LONGEST_NAME) == max(longest) == 255
    assert max(longest) <= MAX_LOGGED_CHARS
    get_logger("dispatcher.test_log_parts").info(
        "task %s (uuid %s) finished", LONGEST_NAME, "u" * 255
    )
    assert log.getvalue() == f"INFO task {LONGEST_NAME} (uuid {'u' * 255}) finished\n"


def test_a_phrase_cuts_each_value_alone_and_keeps_its_words(log: io.StringIO) -> None:
    logger = get_logger("dispatcher.test_log_parts")
    long = "v" * 1000
    logger.warning(
        "first %s", Phrase("%s (uuid %s): %d of %d; no attempt left", long, FORGED, 2, 2)
    )
    (line,) = log.getvalue().splitlines()
    cut = f"{'v' * MAX_LOGGED_CHARS}... ({1000 - MAX_LOGGED_CHARS} more characters)"
    assert (
        line
        == f"WARNING first {cut} (uuid x\\nCRITICAL dispatcher.service: FORGED LINE): 2 of 2; no attempt left"
    )


def test_a_phrase_is_safe_wherever_it_is_written() -> None:
    text = str(Phrase("a %s b %s%%", FORGED, "y" * 300))
    assert "\n" not in text
    assert text.endswith(f"... ({300 - MAX_LOGGED_CHARS} more characters)%")


def test_a_list_of_jobs_names_each_whole_and_says_how_many_more(log: io.StringIO) -> None:
    jobs = [Job(uuid=f"uuid-{n}", task=LONGEST_NAME, line=b"") for n in range(25)]
    get_logger("dispatcher.test_log_parts").warning("abandoned: %s", listed(jobs))
    line = log.getvalue()
    assert line.count(f"{LONGEST_NAME} (uuid uuid-") == 20
    assert line.endswith(f"{LONGEST_NAME} (uuid uuid-19) and 5 more\n")
    assert str(listed(jobs[:2])) == f"{LONGEST_NAME} (uuid uuid-0), {LONGEST_NAME} (uuid uuid-1)"
    assert str(Phrase.joined(", ", [])) == ""


@pytest.fixture
def root_saved() -> Iterator[logging.Logger]:
    """The root logger, its handlers, its level and the ``dispatcher`` level put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ours = logging.getLogger("dispatcher")
    ours_level = ours.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    ours.setLevel(ours_level)


def test_log_to_replaces_its_own_handler_and_keeps_the_applications(
    root_saved: logging.Logger,
) -> None:
    root_saved.handlers[:] = []  # (pytest's own)
    first, second = io.StringIO(), io.StringIO()
    log_to(first, logging.INFO, "%(message)s")
    log_to(second, logging.DEBUG, "%(message)s")  # (a worker: the service's is replaced)
    assert [h.stream for h in root_saved.handlers] == [second]  # type: ignore[attr-defined]
    assert root_saved.level == logging.DEBUG
    app = logging.StreamHandler(io.StringIO())
    root_saved.handlers[:] = [app]
    root_saved.setLevel(logging.WARNING)
    log_to(first, logging.INFO, "%(message)s")
    assert root_saved.handlers == [app]
    assert root_saved.level == logging.WARNING  # the application's, as it set it
    assert logging.getLogger("dispatcher").level == logging.INFO


EVERY_ATTRIBUTE = (
    "%(name)s %(levelno)d %(levelname)s %(pathname)s %(filename)s %(module)s %(lineno)d "
    "%(funcName)s %(created)f %(msecs)d %(relativeCreated)d %(thread)d %(threadName)s "
    "%(process)d %(processName)s %(message)s"
)


def test_lean_records_still_format_with_every_attribute_and_are_undone() -> None:
    flags = (logging._srcfile, logging.logThreads, logging.logProcesses)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(EVERY_ATTRIBUTE))
    logger = logging.getLogger("app.lean")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with lean_records():
            logger.warning("lean")
            braces = logging.Formatter("{process:d} {thread:d} {lineno:d}", style="{")
            assert braces.format(logger.makeRecord("a", 30, "f", 1, "m", None, None))
        assert (logging._srcfile, logging.logThreads, logging.logProcesses) == flags
    finally:
        logger.removeHandler(handler)
    assert f" {os.getpid()} MainProcess lean\n" in stream.getvalue()


def test_an_escaping_stream_writes_each_record_on_lines_of_its_own() -> None:
    out = io.StringIO()
    stream = EscapingStream(out)
    stream.write("plain line\n")
    stream.write(f"said {FORGED}\r\x1b[2J\n")
    stream.write("failed\nTraceback:\n  | kept\n\nValueError: x\n")
    assert out.getvalue().splitlines() == [
        "plain line",
        "said x",
        "  | CRITICAL dispatcher.service: FORGED LINE\\r\\x1b[2J",
        "failed",
        "  | Traceback:",
        "  | kept",
        "  | ",
        "  | ValueError: x",
    ]


def test_handlers_writing_to_fds_1_and_2_are_pointed_at_the_log() -> None:
    out, err = io.StringIO(), io.StringIO()
    streams = HandlerStreams(out, err)
    to_fd1, to_fd2 = open(1, "w", closefd=False), open(2, "w", closefd=False)  # noqa: SIM115
    handlers = [
        logging.StreamHandler(to_fd1),
        logging.StreamHandler(to_fd2),
        logging.StreamHandler(io.StringIO()),  # (elsewhere: left alone)
    ]
    try:
        assert streams.adopt()
        assert [type(h.stream) for h in handlers[:2]] == [EscapingStream, EscapingStream]
        assert handlers[0].stream.stream is out
        assert handlers[1].stream.stream is err
        assert type(handlers[2].stream) is io.StringIO
        later = logging.StreamHandler(to_fd2)  # made since: found at the next look
        assert streams.adopt()
        assert later.stream.stream is err
        later.handle(logging.makeLogRecord({"msg": FORGED, "levelno": 40}))
        assert err.getvalue() == "x\n  | CRITICAL dispatcher.service: FORGED LINE\n"
    finally:
        for handler in handlers:
            handler.close()


def test_a_long_list_of_names_is_cut_after_twenty_saying_how_many_more() -> None:
    names = [f"channel_{n}" for n in range(25)]
    said = str(named_list(names))
    assert said.startswith("channel_0, channel_1, ")
    assert said.endswith("channel_19 and 5 more")
    assert str(named_list(names[:3])) == "channel_0, channel_1, channel_2"
