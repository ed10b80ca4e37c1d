"""The control client refuses arguments it cannot act on, naming the parameter, before sending."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.control import (
    MAX_CONTROL_TIMEOUT,
    acontrol,
    acontrol_with_reply,
    control,
    control_with_reply,
)
from dispatcher.publish import BrokerUnavailable, DispatcherError, InvalidSubmission
from dispatcher.server import ctl

NO_WAIT = "timeout: expected a number of seconds above 0 and at most 31536000 (365 days), got"

WRONG = [
    ({"timeout": -1}, f"{NO_WAIT} int -1"),
    ({"timeout": 0}, f"{NO_WAIT} int 0"),
    ({"timeout": math.nan}, f"{NO_WAIT} float nan"),
    ({"timeout": math.inf}, f"{NO_WAIT} float inf"),
    ({"timeout": 1e10}, f"{NO_WAIT} float 10000000000.0"),
    ({"timeout": 31_536_001}, f"{NO_WAIT} int 31536001"),
    ({"timeout": True}, f"{NO_WAIT} bool True"),
    ({"timeout": "2"}, f"{NO_WAIT} str '2'"),
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


@pytest.fixture
def _socket_config(tmp_path: Path) -> Iterator[None]:
    """Control commands go to a socket no service listens on."""
    setup({"version": 1, "brokers": {"socket": {"path": str(tmp_path / "none.sock")}}})
    yield
    reset()


@pytest.mark.usefixtures("_socket_config")
@pytest.mark.parametrize("timeout", [1e10, 31_536_001, 1e300])
def test_a_wait_longer_than_a_year_is_refused_not_an_overflow(timeout: float) -> None:
    said = f"cannot send control command 'alive': {NO_WAIT} {type(timeout).__name__} {timeout!r}"
    with pytest.raises(InvalidSubmission) as refused:
        control_with_reply("alive", timeout=timeout)
    assert str(refused.value) == said
    with pytest.raises(InvalidSubmission) as refused:
        asyncio.run(acontrol_with_reply("alive", timeout=timeout))
    assert str(refused.value) == said
    # A year is taken: the socket is then looked for.
    with pytest.raises(BrokerUnavailable, match="cannot connect to the service's socket"):
        control_with_reply("alive", timeout=MAX_CONTROL_TIMEOUT)


@pytest.mark.parametrize("timeout", ["1e10", "31536001", "inf"])
def test_dispatcherctl_refuses_a_wait_longer_than_a_year(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    config = tmp_path / "dispatcher.yml"
    config.write_text(f"version: 1\nbrokers: {{socket: {{path: {tmp_path / 'none.sock'}}}}}\n")
    with pytest.raises(SystemExit) as refused:
        ctl.main(["--config", str(config), "--timeout", timeout, "alive"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "dispatcherctl: error: argument --timeout: expected a number of seconds above 0 and at "
        f"most 31536000 (365 days), got {timeout!r}\n"
    )
    assert ctl.main(["--config", str(config), "--timeout", "31536000", "alive"]) == 1
    assert "cannot connect to the service's socket" in capsys.readouterr().err
