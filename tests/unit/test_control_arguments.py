"""The control client refuses arguments it cannot act on, naming the parameter, before sending."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from dispatcher.control import acontrol, acontrol_with_reply, control, control_with_reply
from dispatcher.publish import DispatcherError, InvalidSubmission

WRONG = [
    ({"timeout": -1}, "timeout: expected a number of seconds above 0, got int -1"),
    ({"timeout": 0}, "timeout: expected a number of seconds above 0, got int 0"),
    ({"timeout": math.nan}, "timeout: expected a number of seconds above 0, got float nan"),
    ({"timeout": math.inf}, "timeout: expected a number of seconds above 0, got float inf"),
    ({"timeout": True}, "timeout: expected a number of seconds above 0, got bool True"),
    ({"timeout": "2"}, "timeout: expected a number of seconds above 0, got str '2'"),
    (
        {"expected_replies": -1},
        "expected_replies: expected a whole number (0 or more) or None, got int -1",
    ),
    (
        {"expected_replies": True},
        "expected_replies: expected a whole number (0 or more) or None, got bool True",
    ),
    (
        {"expected_replies": 1.0},
        "expected_replies: expected a whole number (0 or more) or None, got float 1.0",
    ),
    (
        {"expected_replies": math.nan},
        "expected_replies: expected a whole number (0 or more) or None, got float nan",
    ),
    ({"queue": 5}, "queue: 5 is not a valid channel name"),
    ({"queue": ""}, "queue: '' is not a valid channel name"),
]


@pytest.mark.parametrize(("options", "said"), WRONG)
def test_control_with_reply_refuses_naming_the_parameter(
    options: dict[str, Any], said: str
) -> None:
    with pytest.raises(InvalidSubmission) as refused:
        control_with_reply("alive", **options)
    assert str(refused.value).startswith(f"cannot send control command 'alive': {said}")
    assert isinstance(refused.value, DispatcherError)


@pytest.mark.parametrize(("options", "said"), WRONG)
def test_the_async_twin_refuses_the_same(options: dict[str, Any], said: str) -> None:
    with pytest.raises(InvalidSubmission) as refused:
        asyncio.run(acontrol_with_reply("alive", **options))
    assert str(refused.value).startswith(f"cannot send control command 'alive': {said}")


@pytest.mark.parametrize("queue", [5, "", "a b"])
def test_control_refuses_a_queue_that_is_no_channel(queue: Any) -> None:
    with pytest.raises(InvalidSubmission, match=r"^cannot send control command 'alive': queue: "):
        control("alive", queue=queue)
    with pytest.raises(InvalidSubmission, match=r"^cannot send control command 'alive': queue: "):
        asyncio.run(acontrol("alive", queue=queue))
