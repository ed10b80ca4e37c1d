"""Log lines that outside input cannot forge: escaping, truncation, indented blocks."""

from __future__ import annotations

import ast
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.server.log_arguments import Block, Excerpt
from dispatcher.server.log_records import EscapingFilter, get_logger
from dispatcher.server.log_setup import log_to
from dispatcher.server.log_text import (
    MAX_BLOCK_HEAD_LINES,
    MAX_BLOCK_LINES,
    MAX_LOGGED_CHARS,
    cut_middle,
    describe_exception,
    escape,
    indented,
)
from support.paths import PACKAGES

SERVER = PACKAGES / "dispatcher-server" / "src" / "dispatcher" / "server"
FORGED = "x\nCRITICAL dispatcher.service: FORGED LINE"


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger from get_logger, writing to a string in the service's format."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = get_logger("dispatcher.test_logsafe")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_printable_text_is_returned_as_it_is() -> None:
    assert escape("task myapp.tasks.send (uuid 1b4e) é ü 漢字 \\n") == (
        "task myapp.tasks.send (uuid 1b4e) é ü 漢字 \\n"
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("a\x00b", "a\\x00b"),
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("a\x85b", "a\\x85b"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("tag \U000e0041", "tag \\U000e0041"),
    ],
)
def test_non_printable_characters_are_escaped(raw: str, shown: str) -> None:
    assert escape(raw) == shown


def test_long_values_are_cut_and_say_how_much_was_cut() -> None:
    assert escape("x" * 250, limit=100) == "x" * 100 + "... (150 more characters)"
    assert escape("x" * MAX_LOGGED_CHARS) == "x" * MAX_LOGGED_CHARS
    assert escape("\n" * 300, limit=10) == "\\n" * 10 + "... (290 more characters)"
    assert escape("y" * 100_000, limit=None) == "y" * 100_000


def test_other_values_are_escaped_as_their_text() -> None:
    assert escape(ValueError("bad\nvalue")) == "bad\\nvalue"
    assert escape(None) == "None"


def test_a_forged_line_never_starts_a_line(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.warning("rejected message (uuid %s): %s", FORGED, {"uuid": FORGED})
    logger.info("mapping %(uuid)s", {"uuid": FORGED})
    logger.info(FORGED)
    output = stream.getvalue()
    assert output.count("\n") == 3
    assert not any(line.startswith("CRITICAL") for line in output.splitlines())
    assert "x\\nCRITICAL dispatcher.service: FORGED LINE" in output


def test_numbers_keep_their_format(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.info("worker %d took %.1f ms (%s)", 3, 1.25, True)
    assert stream.getvalue() == "INFO dispatcher.test_logsafe: worker 3 took 1.2 ms (True)\n"


def test_nul_bytes_are_escaped_and_arguments_cut(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.info("task %s", "a\x00b" + "c" * 500)
    output = stream.getvalue()
    assert "\x00" not in output
    assert (
        f"a\\x00b{'c' * (MAX_LOGGED_CHARS - 3)}... ({503 - MAX_LOGGED_CHARS} more characters)\n"
        in output
    )


def test_blocks_follow_on_indented_lines(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    traceback = f"Traceback (most recent call last):\n  File 'x'\nValueError: {FORGED}\x00\n"
    logger.error("task %s failed:%s", "t", Block(traceback))
    first, *following = stream.getvalue().splitlines()
    assert first == "ERROR dispatcher.test_logsafe: task t failed:"
    assert following == [
        "  | Traceback (most recent call last):",
        "  |   File 'x'",
        "  | ValueError: x",
        "  | CRITICAL dispatcher.service: FORGED LINE\\x00",
    ]


def test_every_line_break_starts_an_indented_line() -> None:
    lines = str(Block("a\rb\x0bc\u2028d\x1ce")).split("\n")
    assert lines == ["", "  | a", "  | b", "  | c", "  | d", "  | e"]


def test_exceptions_are_indented_and_escaped(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    try:
        raise ValueError(FORGED + "\x00")
    except ValueError:
        logger.exception("handling %s", "m")
    first, *following = stream.getvalue().splitlines()
    assert first == "ERROR dispatcher.test_logsafe: handling m"
    assert following[0] == "  | Traceback (most recent call last):"
    assert all(line.startswith("  | ") for line in following)
    assert "  | CRITICAL dispatcher.service: FORGED LINE\\x00" in following


def test_a_record_is_escaped_once_by_logger_and_handler_filters() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = get_logger("dispatcher.test_logsafe.twice")
    handler.addFilter(logger.filters[0])
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("a%s", Block("b\nc"))
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "a\n  | b\n  | c\n"


def test_get_logger_installs_its_filter_once() -> None:
    first = get_logger("dispatcher.test_logsafe.once")
    again = get_logger("dispatcher.test_logsafe.once")
    assert first is again
    assert len(first.filters) == 1


def _direct_get_logger_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "getLogger":
            found.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "logging":
            found += [node.lineno for alias in node.names if alias.name == "getLogger"]
    return found


LOGGING_SET_UP = {"log_records.py", "log_handler.py", "log_setup.py"}
"""The modules that make loggers and handlers (the only ones that call logging.getLogger)."""


def test_server_modules_get_their_loggers_from_log_records() -> None:
    modules = sorted(SERVER.rglob("*.py"))
    assert len(modules) > 10
    offenders = [
        f"{path.relative_to(SERVER)}:{line}"
        for path in modules
        if path.name not in LOGGING_SET_UP
        for line in _direct_get_logger_calls(path)
    ]
    assert offenders == [], (
        "use dispatcher.server.log_records.get_logger instead of logging.getLogger"
    )


def test_an_empty_block_adds_no_line() -> None:
    assert str(Block("")) == str(Block(" \n")) == ""


EVERY_TEXT = (
    "%(name)s %(levelname)s %(pathname)s %(filename)s %(module)s %(funcName)s"
    " %(threadName)s %(processName)s %(custom)s: %(message)s"
)
"""A format showing every text of a record that its logger's caller chooses."""


class _Forging:
    def __str__(self) -> str:
        return FORGED


@pytest.mark.parametrize(
    "attribute",
    [
        *("name", "levelname", "pathname", "filename", "module", "funcName"),
        *("threadName", "processName", "custom"),
    ],
)
def test_every_text_a_format_can_show_is_escaped(attribute: str) -> None:
    record = logging.LogRecord("dispatcher.test", logging.INFO, "/a/b.py", 1, "m", None, None)
    record.custom = "fine"
    setattr(record, attribute, FORGED)
    EscapingFilter().filter(record)
    line = logging.Formatter(EVERY_TEXT).format(record)
    assert "\n" not in line
    assert escape(FORGED) in line


def test_texts_that_are_not_strings_or_too_long_are_escaped_and_cut() -> None:
    record = logging.LogRecord("n" * 5000, logging.INFO, "/a/b.py", 1, "m", None, None)
    record.levelname = _Forging()  # type: ignore[assignment]
    record.custom = _Forging()
    EscapingFilter().filter(record)
    line = logging.Formatter(EVERY_TEXT).format(record)
    assert line.count(escape(FORGED)) == 2
    assert f"{'n' * MAX_LOGGED_CHARS}... ({5000 - MAX_LOGGED_CHARS} more characters)" in line
    assert "\n" not in line


def test_safe_texts_seen_before_are_still_written_as_they_are() -> None:
    for _ in range(2):
        record = logging.LogRecord("dispatcher.x", logging.INFO, "/a/b.py", 1, "m", None, None)
        record.custom = 7
        EscapingFilter().filter(record)
        assert (record.name, record.levelname, record.pathname) == (
            "dispatcher.x",
            "INFO",
            "/a/b.py",
        )
        assert record.custom == 7


def test_an_excerpt_is_cut_at_its_own_limit(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.warning("rejected: %s", Excerpt("a\n" + "b" * 998 + "c" * 5, 1000))
    assert (
        stream.getvalue()
        == f"WARNING dispatcher.test_logsafe: rejected: a\\n{'b' * 998}... (5 more characters)\n"
    )


def test_cut_middle_keeps_start_and_end_within_the_limit() -> None:
    assert cut_middle("short", 100) == "short"
    cut = cut_middle("a" * 500 + "b" * 500, 200)
    assert cut == f"{'a' * 76}\n[... 848 characters left out ...]\n{'b' * 76}"
    assert len(cut) <= 200


def test_a_long_block_keeps_its_first_and_last_lines() -> None:
    lines = [f"line {n}" for n in range(1000)]
    shown = indented("\n".join(lines)).splitlines()
    assert len(shown) == MAX_BLOCK_LINES + 1
    assert shown[0] == "  | line 0"
    assert shown[MAX_BLOCK_HEAD_LINES] == f"  | ({1000 - MAX_BLOCK_LINES} lines not shown)"
    assert shown[-1] == "  | line 999"


@pytest.fixture
def root_log() -> Iterator[io.StringIO]:
    """The root logger's handler as log_to() sets it up (in a worker, say); undone after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = []  # (pytest's own: the application's, which log_to() would keep)
    stream = io.StringIO()
    log_to(stream, logging.INFO, "%(levelname)s %(name)s: %(message)s ctx=%(ctx)s")
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


class _Kept(logging.Handler):
    """An application's structured handler (JSON logging, Sentry): keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, object, object, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        ctx = record.ctx  # type: ignore[attr-defined]
        self.records.append((record.name, record.args, ctx, record.getMessage()))


def test_other_handlers_get_the_record_as_it_was_logged(root_log: io.StringIO) -> None:
    kept = _Kept()
    logging.getLogger().addHandler(kept)  # the application's, after ours
    name = "app." + "n" * 300
    context = {"order": 7, "note": FORGED}
    logging.getLogger(name).info("charged %s", [FORGED], extra={"ctx": context})
    assert kept.records == [(name, ([FORGED],), context, f"charged {[FORGED]}")]
    (line,) = root_log.getvalue().splitlines()
    cut = 304 - MAX_LOGGED_CHARS
    assert line.startswith(f"INFO app.{'n' * (MAX_LOGGED_CHARS - 4)}... ({cut} more characters)")
    assert escape([FORGED]) in line
    assert line.endswith(f" ctx={escape(context)}")


def test_a_record_saying_it_was_escaped_is_escaped(root_log: io.StringIO) -> None:
    extra = {"ctx": FORGED, "_dispatcher_escaped": True}
    logging.getLogger("app").warning("%s", FORGED, extra=extra)
    get_logger("dispatcher.escaped_said").warning("%s", FORGED, extra=extra)
    lines = root_log.getvalue().splitlines()
    assert len(lines) == 2
    assert not any(line.startswith("CRITICAL") for line in lines)


class _ForgingInt(int):
    def __str__(self) -> str:
        return FORGED

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return FORGED


class _ForgingFloat(float):
    def __str__(self) -> str:
        return FORGED

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return FORGED


@pytest.mark.parametrize("value", [_ForgingInt(1), _ForgingFloat(1.5)], ids=["int", "float"])
def test_numbers_of_subclasses_are_escaped(root_log: io.StringIO, value: object) -> None:
    logging.getLogger("app").warning("n=%s %d", value, value, extra={"ctx": value})
    get_logger("dispatcher.escaped_numbers").warning("n=%s", value, extra={"ctx": value})
    lines = root_log.getvalue().splitlines()
    assert len(lines) == 2
    assert not any(line.startswith("CRITICAL") for line in lines)


def test_an_exception_without_a_message_is_described_by_its_type_alone() -> None:
    """``raise KeyboardInterrupt`` failed its task with ``KeyboardInterrupt: ``, as if cut."""
    assert describe_exception(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert describe_exception(SystemExit(0)) == "SystemExit: 0"
    assert describe_exception(ValueError("")) == "ValueError"
