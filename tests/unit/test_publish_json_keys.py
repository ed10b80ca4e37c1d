"""Keys that are no strings: JSON writes ``1`` as ``"1"``, ``None`` as ``"null"``.

Two keys of a dict that JSON writes as the same string would reach a service as one: the
submission is refused, naming where and which keys, before anything is sent (and in the
testing modes too). Keys that do not collide are sent, as JSON writes them, and count for
``on_duplicate`` as a service reads them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import reset, setup
from dispatcher.control import acontrol_with_reply, control, control_with_reply
from dispatcher.publish import InvalidSubmission, prepare_submission, submit_task, task
from dispatcher.schema import duplicate_identity, duplicate_key
from dispatcher.testing import captured, eager
from support import testing_tasks as tasks
from support.examples import examples

BOTH = "in JSON: a service would read one of their values only"


@task(queue="jobs")
def echo(*args: Any, **kwargs: Any) -> list[Any]:
    """Returns its arguments."""
    return [args, kwargs]


@pytest.fixture
def _unreachable() -> Iterator[None]:
    """A config whose database no one can reach: a refusal comes before any send."""
    setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {
                    "conninfo": "host=/nonexistent dbname=x connect_timeout=1",
                    "channels": ["jobs"],
                    "default_publish_channel": "jobs",
                },
                "pg_queue": {"queues": ["durable"]},
            },
        }
    )
    yield
    reset()


COLLISIONS: list[tuple[dict[str, Any], str]] = [
    ({"kwargs": {1: "int", "1": "str"}}, f"""kwargs['1']: the keys '1' and 1 are both "1" {BOTH}"""),
    (
        {"args": [{None: "a", "null": "b"}]},
        f"""args[0].null: the keys 'null' and None are both "null" {BOTH}""",
    ),
    ({"args": [{"true": 1, True: 2}]}, f"""args[0].true: the keys 'true' and True are both "true" {BOTH}"""),
    ({"args": [{False: 1, "false": 2}]}, f"""args[0].false: the keys 'false' and False are both "false" {BOTH}"""),
    ({"kwargs": {"x": [{1.5: 1, "1.5": 2}]}}, f"""kwargs.x[0]['1.5']: the keys '1.5' and 1.5 are both "1.5" {BOTH}"""),
    ({"kwargs": {"x": {"y": {-3: 1, "-3": 2}}}}, f"""kwargs.x.y['-3']: the keys '-3' and -3 are both "-3" {BOTH}"""),
    (  # with an option: the message goes through the general encoder
        {"args": [{1: "a", "1": "b"}], "timeout": 5},
        f"""args[0]['1']: the keys '1' and 1 are both "1" {BOTH}""",
    ),
    ({"extra": {"trace": {2: "a", "2": "b"}}}, f"""extra.trace['2']: the keys '2' and 2 are both "2" {BOTH}"""),
]  # fmt: skip


@pytest.mark.usefixtures("_unreachable")
@pytest.mark.parametrize(
    ("options", "reason"), COLLISIONS, ids=[reason.split(":")[0] for _, reason in COLLISIONS]
)
@pytest.mark.parametrize("queue", ["jobs", "durable"])
def test_keys_json_writes_alike_are_refused_before_anything_is_sent(
    options: dict[str, Any], reason: str, queue: str
) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        submit_task("myapp.tasks.work", queue=queue, on_duplicate="serial", **options)
    assert str(caught.value) == f"cannot submit myapp.tasks.work: {reason}"
    with pytest.raises(InvalidSubmission) as caught:  # a registered task: the fast path
        echo.apply_async(queue=queue, **options)
    assert str(caught.value) == f"cannot submit {echo.__dispatcher_task__}: {reason}"


@pytest.mark.parametrize("mode", [eager, captured])
def test_the_testing_modes_refuse_them_the_same(
    mode: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tasks.forbid_database(monkeypatch, tmp_path)
    with mode(), pytest.raises(InvalidSubmission) as caught:
        echo.apply_async(args=[{1: "int key", "1": "str key", None: "none key"}])
    assert str(caught.value).endswith(f"""args[0]['1']: the keys '1' and 1 are both "1" {BOTH}""")
    reset()


@pytest.mark.usefixtures("_unreachable")
def test_a_key_json_cannot_write_is_named() -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("myapp.tasks.work", kwargs={"x": {float("nan"): 1}})
    assert (
        str(caught.value)
        == "cannot submit myapp.tasks.work: kwargs.x: the key nan is not valid in JSON"
    )


@pytest.mark.usefixtures("_unreachable")
def test_keys_that_do_not_collide_are_sent_as_json_writes_them() -> None:
    submission = prepare_submission(
        "myapp.tasks.work", args=[{None: 1, 3: 2, 2.5: 3, True: 4, "x": 5}], kwargs={7: "a"}
    )
    assert json.loads(submission.payloads[0])["args"] == [
        {"null": 1, "3": 2, "2.5": 3, "true": 4, "x": 5}
    ]


def test_the_duplicate_identity_is_that_of_the_message_a_service_reads() -> None:
    for args, kwargs in [
        ([{1: "a", "b": 2}], {}),  # keys that do not compare: sorted as JSON writes them
        ([], {10: "a", 9: "b"}),  # sorted as numbers, 9 would come before 10
        ([{None: [{True: 1, "a": 2}]}], {"k": {2.5: 0}}),
    ]:
        message = {"task": "t.x", "args": args, "kwargs": kwargs}
        as_read = json.loads(json.dumps(message))
        assert duplicate_identity(message) == duplicate_identity(as_read)
        assert duplicate_key(message) == duplicate_key(as_read)


KEYS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-20, 20),
    st.sampled_from([0.5, -1.5, 1e16, 2.0]),
    st.sampled_from(["null", "true", "false", "0", "1", "-1", "0.5", "1e+16", "2.0", "a"]),
)
VALUES = st.recursive(
    st.integers(0, 3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)


def count_keys(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(count_keys(item) for item in value.values())
    if isinstance(value, list):
        return sum(count_keys(item) for item in value)
    return 0


@pytest.mark.usefixtures("_unreachable")
@settings(max_examples=examples(300), deadline=None)
@given(args=st.lists(VALUES, max_size=3), plain=st.booleans())
def test_no_value_is_ever_lost_on_the_way(args: list[Any], plain: bool) -> None:
    options = {} if plain else {"timeout": 5}
    try:
        submission = prepare_submission(echo, args=args, **options)
    except InvalidSubmission as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert "are both" in refused
        return
    sent = json.loads(submission.payloads[0])["args"]
    assert count_keys(sent) == count_keys(args)


@pytest.mark.usefixtures("_unreachable")
def test_a_control_command_with_such_keys_is_refused_before_it_is_sent() -> None:
    data = {"task": "myapp.tasks.work", "args": [{1: "a", "1": "b"}]}
    said = (
        """cannot send control command 'run': control_data.args[0]['1']: the keys '1' and 1 """
        f"""are both "1" {BOTH}"""
    )
    with pytest.raises(InvalidSubmission, match=re.escape(said)):
        control("run", data)
    with pytest.raises(InvalidSubmission, match=re.escape(said)):
        control_with_reply("run", data, expected_replies=1)
    with pytest.raises(InvalidSubmission, match=re.escape(said)):
        asyncio.run(acontrol_with_reply("run", data, expected_replies=1))
