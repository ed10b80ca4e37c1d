"""The JSON log format, and the names of the log records' attributes, events and reasons."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.schema import LOG_FORMATS, load_schema
from dispatcher.schema import log_fields as fields
from dispatcher.server.log_setup import log_to
from dispatcher.server.log_text import MAX_LOGGED_CHARS
from dispatcher.server.logformat import HeldRecords, JsonFormatter
from dispatcher.server.rejection import REJECTION_REASONS
from support.paths import REPO

SOURCES = REPO / "packages"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger writes JSON lines here during the test (its handlers put back)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    written = io.StringIO()
    root.handlers[:] = []  # (pytest's own: log_to keeps an application's handlers)
    log_to(written, logging.DEBUG, JsonFormatter(defaults={"dispatcher_worker": 3}))
    try:
        yield written
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.isascii()
    return [json.loads(line) for line in text.splitlines()]


class Unprintable:
    def __str__(self) -> str:
        raise SystemExit("no")


def test_every_record_is_one_ascii_line_whatever_its_values(stream: io.StringIO) -> None:
    logger = logging.getLogger("app\u2028x")
    logger.warning(
        "%s and %s",
        "a\nb\u2028c\x00",
        "é" * 300,
        extra={"tags": {"a", "b"}, "odd": Unprintable(), "ratio": float("nan"), "n": 7},
    )
    [record] = lines(stream)
    assert record["logger"] == "app\\u2028x"  # escaped as the text line has it
    message = str(record["message"])
    assert message.startswith("a\\nb\\u2028c\\x00 and ")
    assert message.endswith(f"({300 - MAX_LOGGED_CHARS} more characters)")
    assert record["n"] == 7
    assert record["dispatcher_worker"] == 3  # a default: set on every line
    assert record["odd"] == "<str() failed: SystemExit>"
    assert record["ratio"] == "nan"
    assert record["level"] == "WARNING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(record["time"]))


def test_extra_values_of_json_types_are_kept_as_they_are(stream: io.StringIO) -> None:
    logging.getLogger("app").info(
        "done", extra={"items": [1, "two", None], "meta": {"k": True}, "dispatcher_worker": 5}
    )
    [record] = lines(stream)
    assert record["items"] == [1, "two", None]
    assert record["meta"] == {"k": True}
    assert record["dispatcher_worker"] == 5  # the record's own wins over a default


def test_an_exception_is_kept_whole_beside_the_message(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("app").exception("it failed")
    [record] = lines(stream)
    assert record["message"] == "it failed"
    exception = str(record["exception"])
    assert exception.startswith("Traceback (most recent call last):\n")
    assert exception.endswith("ValueError: bad\nvalue")


def test_the_configs_log_formats_are_the_ones_the_code_knows() -> None:
    service = load_schema("config")["properties"]["service"]["properties"]
    assert tuple(service["log_format"]["enum"]) == LOG_FORMATS
    assert service["log_format"]["default"] == LOG_FORMATS[0]


def test_every_attribute_and_event_is_documented() -> None:
    page = (REPO / "docs" / "logging.md").read_text()
    for name in (*fields.ATTRIBUTES, *fields.EVENTS):
        assert f"`{name}`" in page, name
    assert all(name.startswith("dispatcher_") for name in fields.ATTRIBUTES)
    assert not set(fields.ATTRIBUTES) & set(vars(logging.makeLogRecord({})))


def source_files() -> Iterator[Path]:
    yield from SOURCES.glob("*/src/dispatcher/**/*.py")


def test_every_event_the_code_logs_is_one_of_the_known_events() -> None:
    logged: set[str] = set()
    pattern = re.compile(
        r"(?:job_fields\(|self\._fields\(|EVENT\]? ?[:=] |if failed else )\"([a-z_]+)\""
    )
    for path in source_files():
        text = path.read_text()
        logged |= set(pattern.findall(text))
        logged |= set(re.findall(r"\"([a-z_]+)\" if failed else", text))
    assert logged
    assert logged <= set(fields.EVENTS)
    assert "task_failed" in logged


def test_every_reason_the_service_counts_is_a_known_one() -> None:
    counted: set[str] = set()
    for path in (SOURCES / "dispatcher-server").rglob("*.py"):
        text = path.read_text()
        counted |= set(re.findall(r"Rejected\(\s*\"([a-z_]+)\"", text))
        counted |= set(re.findall(r"rejected\[\"([a-z_]+)\"\]", text))
        counted |= set(re.findall(r"reason(?:, refusal)? = \"([a-z_]+)\"", text))
    counted.discard("stopping")  # refused to the caller inside the service, not counted
    assert {"unknown_task", "control_not_allowed", "internal_error"} <= counted
    assert counted <= set(REJECTION_REASONS)


def test_records_held_until_the_format_is_known_are_all_kept_then_written() -> None:
    """Every record logged while the config is read is kept (the first one used to take the
    keeper off the root logger, its lock held), then written in the chosen format."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        held = HeldRecords.hold(logging.INFO)
        logger = logging.getLogger("dispatcher.config")
        logger.info("first")
        logger.info("second")
        logger.warning("third")
        logger.debug("not kept: below the level")
        held.stop_holding()
        written = io.StringIO()
        log_to(written, logging.INFO, JsonFormatter())
        held.replay()
        logger.info("after")
        assert [(r["level"], r["message"]) for r in lines(written)] == [
            ("INFO", "first"),
            ("INFO", "second"),
            ("WARNING", "third"),
            ("INFO", "after"),
        ]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
