"""dispatcherd's publisher API where it costs nothing: ``(body, queue)``, ``processor_options``
and control results that behave like a list (no database needed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.control import ControlResult
from dispatcher.publish import (
    InvalidSubmission,
    RegistrationError,
    batch,
    prepare_submission,
    submit_task,
    task,
)
from support import tasks


@pytest.fixture(autouse=True)
def _config() -> Iterator[None]:
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["only"]}}})
    yield
    reset()


# Stand-ins shaped like dispatcherd's params objects: dataclasses with a to_dict() method.
@dataclass(kw_only=True)
class DelayParams:
    delay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class BlockParams:
    on_duplicate: str = "parallel"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class OtherParams:
    priority: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Abandon(Exception):
    """Raised inside a batch() block so that nothing is sent."""


@task(name="tests.dispatcherd_api.delayed", processor_options=(DelayParams(delay=3),))
def delayed() -> None:
    """A task whose delay comes from processor_options."""


def test_submission_unpacks_as_body_and_queue() -> None:
    submission = prepare_submission(tasks.add, args=[1, 2])
    body, queue = submission
    assert body is submission.message
    assert queue == submission.channel == "only"
    assert submission[0] is body
    assert submission[1] == "only"
    assert len(submission) == 2
    assert tuple(submission) == (body, "only")
    assert body["task"] == "support.tasks.add"
    assert body["args"] == [1, 2]


def _delay_and_submit() -> None:
    with batch():  # collected, then abandoned: nothing is sent
        body, queue = tasks.add.delay(1, 2)
        assert (body["args"], queue) == ([1, 2], "only")
        submission = submit_task(tasks.add, args=[3, 4])
        body, queue = submission
        assert submission.uuid == body["uuid"]
        raise _Abandon


def test_delay_and_submit_task_unpack() -> None:
    with pytest.raises(_Abandon):
        _delay_and_submit()


def test_processor_options_objects_set_message_keys() -> None:
    submission = prepare_submission(
        tasks.add,
        args=[1, 2],
        processor_options=(DelayParams(delay=5), BlockParams(on_duplicate="serial")),
    )
    assert submission.message["delay"] == 5
    assert submission.message["on_duplicate"] == "serial"


@pytest.mark.parametrize(
    "options",
    [
        {"delay": 2, "on_duplicate": "discard"},
        [{"delay": 2}, {"on_duplicate": "discard"}],
        [DelayParams(delay=2), {"on_duplicate": "discard"}],
    ],
)
def test_processor_options_dicts(options: Any) -> None:
    message = prepare_submission("any.task", processor_options=options).message
    assert (message["delay"], message["on_duplicate"]) == (2, "discard")


def test_processor_options_override_task_defaults() -> None:
    default = prepare_submission(tasks.send_email, args=["a@b.c"])
    assert default.message["on_duplicate"] == "serial"
    changed = prepare_submission(
        tasks.send_email, args=["a@b.c"], processor_options=[BlockParams(on_duplicate="discard")]
    )
    assert changed.message["on_duplicate"] == "discard"


def test_processor_options_on_the_decorator() -> None:
    assert prepare_submission(delayed).message["delay"] == 3


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ([OtherParams()], "unknown option 'priority'"),
        ({"priority": 1}, "unknown option 'priority'"),
        ("delay", "got str"),
        ([42], "got int"),
    ],
)
def test_processor_options_errors_name_the_problem(options: Any, words: str) -> None:
    with pytest.raises(InvalidSubmission, match="processor_options") as info:
        prepare_submission("any.task", processor_options=options)
    assert words in str(info.value)


def test_processor_options_conflicting_with_an_option() -> None:
    with pytest.raises(InvalidSubmission, match="delay is 1 there but 2"):
        prepare_submission("any.task", delay=2, processor_options=[DelayParams(delay=1)])
    same = prepare_submission("any.task", delay=1, processor_options=[DelayParams(delay=1)])
    assert same.message["delay"] == 1


def test_processor_options_values_are_checked() -> None:
    with pytest.raises(InvalidSubmission, match="on_duplicate"):
        prepare_submission("any.task", processor_options=[BlockParams(on_duplicate="sometimes")])


def test_unknown_processor_option_on_the_decorator() -> None:
    with pytest.raises(RegistrationError, match="unknown option 'priority'"):
        task(name="tests.dispatcherd_api.bad", processor_options=[OtherParams()])


def test_control_result_behaves_like_the_list_of_replies() -> None:
    replies = [{"node_id": "a", "x": 1}, {"node_id": "b", "x": 2}]
    result = ControlResult("alive", replies=list(replies), expected=2)
    assert len(result) == 2
    assert list(result) == replies
    assert result[0] == replies[0]
    assert result[-1]["node_id"] == "b"
    assert result[:1] == replies[:1]
    assert replies[1] in result
    assert result == replies
    assert replies == result
    assert result != replies[:1]
    assert [reply["node_id"] for reply in result] == ["a", "b"]
    assert result  # true, like a non-empty list
    # Its attributes stay.
    assert result.command == "alive"
    assert result.complete


def test_empty_control_result_is_false() -> None:
    result = ControlResult("running", expected=1)
    assert not result
    assert result == []
    assert len(result) == 0


def test_control_results_compare_by_their_fields() -> None:
    one = ControlResult("alive", replies=[{"node_id": "a"}], expected=1)
    assert one == ControlResult("alive", replies=[{"node_id": "a"}], expected=1)
    assert one != ControlResult("alive", replies=[{"node_id": "a"}], expected=2)
    assert one != ControlResult("status", replies=[{"node_id": "a"}], expected=1)
    with pytest.raises(TypeError):
        hash(one)
