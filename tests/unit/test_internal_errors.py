"""InternalErrorLog: a bug met per message is one line, with a traceback now and then."""

from __future__ import annotations

import logging

import pytest

from dispatcher.server.ratelimit import TRACEBACK_INTERVAL, InternalErrorLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def raised(text: str) -> BaseException:
    try:
        raise KeyError(text)
    except KeyError as exc:
        return exc


@pytest.fixture
def log() -> tuple[InternalErrorLog, FakeClock]:
    clock = FakeClock()
    return InternalErrorLog(logging.getLogger("test.internal"), per_second=3, clock=clock), clock


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_one_line_per_report_with_a_traceback_once_per_site_and_interval(
    log: tuple[InternalErrorLog, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    errors, clock = log
    with caplog.at_level(logging.ERROR, logger="test.internal"):
        errors.report("intake", raised("one"), "a message on c1")
        errors.report("intake", raised("two"))
        errors.report("pool", raised("three"))
        clock.now += TRACEBACK_INTERVAL
        errors.report("intake", raised("four"))
    lines = messages(caplog, logging.ERROR)
    assert [line.splitlines()[0] for line in lines] == [
        "internal error in intake: KeyError: 'one' (a message on c1)",
        "internal error in intake: KeyError: 'two'",
        "internal error in pool: KeyError: 'three'",
        "internal error in intake: KeyError: 'four'",
    ]
    assert ["Traceback" in line for line in lines] == [True, False, True, True]
    assert all(record.exc_info is None for record in caplog.records)


def test_lines_are_rate_limited_and_tracebacks_always_at_debug(
    log: tuple[InternalErrorLog, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    errors, clock = log
    with caplog.at_level(logging.DEBUG, logger="test.internal"):
        for n in range(10):
            errors.report("intake", raised(str(n)))
        clock.now += 1
        errors.report("intake", raised("later"))
    errors_logged = messages(caplog, logging.ERROR)
    assert len(errors_logged) == 1 + 3 + 1  # the traceback line, 3 a second, then the next
    assert errors_logged[-1].endswith("(6 similar lines suppressed)")
    debug = messages(caplog, logging.DEBUG)
    assert len(debug) == 10
    assert all("Traceback" in line for line in debug)


def test_outside_text_is_escaped_and_cut(
    log: tuple[InternalErrorLog, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    errors, _ = log
    with caplog.at_level(logging.ERROR, logger="test.internal"):
        errors.report("intake", ValueError("a\nfake line\x1b[31m" + "z" * 5000), "\u2028")
    first_line, *rest = messages(caplog, logging.ERROR)[0].splitlines()
    assert first_line.startswith("internal error in intake: ValueError: a\\nfake line\\x1b[31m")
    assert len(first_line) < 400
    assert first_line.endswith("(\\u2028)")
    assert all(line.startswith("  | ") for line in rest)
