"""A run request's ``start_by``: the time after which a worker must not start it."""

from __future__ import annotations

import json
import time
from typing import Any

from dispatcher.server.capture import OutputCapture
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.protocol import (
    CANCEL_SIGNALS,
    has_start_by,
    read_line,
    run_line,
    start_by_of,
    with_start_by,
)
from dispatcher.server.worker_runner import TaskRunner

MESSAGE = '{"uuid": "u-1", "task": "app.work",\n "args": ["a,b", {"start_by": 1}]}'


def test_start_by_is_added_to_a_run_request_and_replaced_not_repeated() -> None:
    line = run_line(MESSAGE, "jobs", keep_result=True)
    assert not has_start_by(line)
    stamped = with_start_by(line, 123.25)
    assert has_start_by(stamped)
    request = read_line(stamped.rstrip(b"\n"))
    assert request["start_by"] == 123.25
    assert request["message"] == json.loads(MESSAGE)
    assert (request["channel"], request["result"]) == ("jobs", True)
    again = read_line(with_start_by(stamped, 1e9).rstrip(b"\n"))
    assert again == {**request, "start_by": 1e9}
    assert with_start_by(stamped, 1e9).count(b'"start_by"') == 2  # the op's and the arg's
    assert start_by_of(stamped) == 123.25
    assert start_by_of(with_start_by(stamped, 1e9)) == 1e9
    assert start_by_of(line) is None


class NoCapture(OutputCapture):
    def __init__(self) -> None:
        pass

    def begin(self, task: str, uuid: str) -> None:
        raise AssertionError("an expired request must not start")


def test_an_expired_request_ends_unstarted_or_cancelled_if_it_was_cancelled() -> None:
    hooks = BaseWorker(0)
    runner = TaskRunner(0, None, hooks, NoCapture())  # type: ignore[arg-type]
    message: dict[str, Any] = json.loads(MESSAGE)
    runner.requests = 1
    before = time.time()
    done = runner.unstarted(message, "expired")
    assert (done["event"], done["uuid"], done["outcome"]) == ("done", "u-1", "expired")
    assert before <= done["started"] == done["finished"] <= time.time()
    runner.on_cancel_request(CANCEL_SIGNALS[2 % len(CANCEL_SIGNALS)], None)  # for request 2
    runner.requests = 2
    assert runner.unstarted(message, "expired")["outcome"] == "cancelled"
