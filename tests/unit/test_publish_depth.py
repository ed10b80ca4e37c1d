"""The publisher refuses what a service would refuse as too deep, before sending it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.publish import InvalidSubmission, prepare_submission
from dispatcher.schema import MAX_NESTING_DEPTH, decode_json


@pytest.fixture(autouse=True)
def _config() -> Iterator[None]:
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["only"]}}})
    yield
    reset()


def nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_arguments_as_deep_as_a_service_accepts_are_sent() -> None:
    submission = prepare_submission("app.tasks.x", args=nested(MAX_NESTING_DEPTH - 1))
    [payload] = submission.payloads
    assert decode_json(payload)["args"] == nested(MAX_NESTING_DEPTH - 1)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"args": nested(MAX_NESTING_DEPTH)}, "args"),
        ({"kwargs": {"a": nested(MAX_NESTING_DEPTH - 1)}}, "kwargs"),
        ({"args": [(((),),)] * 2, "extra": {"trace": {"x": nested(100_000)}}}, "extra.trace"),
        ({"args": nested(5_000)}, "args"),
    ],
)
def test_deeper_arguments_are_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("app.tasks.x", **options)
    assert str(caught.value) == (
        f"cannot submit app.tasks.x: {field}: nested more than {MAX_NESTING_DEPTH - 1} levels "
        f"deep, or contains itself (too_deep: a message may nest {MAX_NESTING_DEPTH} levels in all)"
    )
