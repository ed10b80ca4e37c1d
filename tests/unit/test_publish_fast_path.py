"""The cheap path of a submission is invisible: same checks, same errors, same text.

A message built around a registered task skips the schema's validator when a few
comparisons prove it valid (``dispatcher.publish.fast_path``), and a message without
options is encoded in pieces. These tests hold both to the long way: the shortcut may only
ever say "valid" where the schema does, and ``prepare_submission`` gives the same result,
or the same error, with the shortcuts turned off. Routes are remembered per config, and
uuids come from the OS in batches.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import time
import uuid as uuid_module
from collections.abc import Iterator
from typing import Any
from unittest import mock

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.config import get_settings, reset, setup
from dispatcher.publish import (
    InvalidSubmission,
    message_routes,
    message_text,
    prepare_submission,
    uuids,
)
from dispatcher.publish import messages as messages_module
from dispatcher.publish.fast_path import RULES, rules_from_schema, surely_valid
from dispatcher.schema import ON_DUPLICATE_MODES, load_schema, validator
from support import tasks
from support.examples import examples

SCHEMA = load_schema("task-message")
REFERENCE = jsonschema.Draft202012Validator(SCHEMA)
"""The reference implementation of the schema, the judge of every shortcut here."""


@pytest.fixture(autouse=True)
def _config() -> Iterator[None]:
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["only"]}}})
    yield
    reset()


# --- the rules come from the schema, and only a schema they cover turns the shortcut on ---


def test_rules_are_read_from_the_shipped_schema() -> None:
    assert RULES is not None, "the shipped schema must allow the fast path"
    properties = SCHEMA["properties"]
    assert RULES.uuid_length == (properties["uuid"]["minLength"], properties["uuid"]["maxLength"])
    for key in ("time_pub", "timeout", "delay"):
        assert getattr(RULES, key) == (properties[key]["minimum"], properties[key]["maximum"])
    assert RULES.on_duplicate == frozenset(ON_DUPLICATE_MODES)


def _changed(change: str) -> dict[str, Any]:
    schema = copy.deepcopy(SCHEMA)
    properties = schema["properties"]
    if change == "closed object":
        schema["additionalProperties"] = False
    elif change == "more required":
        schema["required"] = ["task", "uuid"]
    elif change == "args bounded":
        properties["args"]["maxItems"] = 10
    elif change == "kwargs keys named":
        properties["kwargs"]["propertyNames"] = {"pattern": "^[a-z]+$"}
    elif change == "timeout stepped":
        properties["timeout"]["multipleOf"] = 1
    elif change == "delay an integer":
        properties["delay"]["type"] = "integer"
    elif change == "uuid patterned":
        properties["uuid"]["pattern"] = "^[0-9a-f-]+$"
    elif change == "bind constant":
        properties["bind"] = {"const": True}
    elif change == "on_duplicate typed":
        properties["on_duplicate"]["type"] = "string"
    elif change == "time_pub gone":
        del properties["time_pub"]
    elif change == "a condition":
        schema["if"] = {"required": ["delay"]}
        schema["then"] = {"required": ["timeout"]}
    return schema


@pytest.mark.parametrize(
    "change",
    [
        "closed object",
        "more required",
        "args bounded",
        "kwargs keys named",
        "timeout stepped",
        "delay an integer",
        "uuid patterned",
        "bind constant",
        "on_duplicate typed",
        "time_pub gone",
        "a condition",
    ],
)
def test_a_schema_that_says_more_turns_the_shortcut_off(change: str) -> None:
    assert rules_from_schema(_changed(change)) is None
    message = {"task": "a.b", "uuid": "u", "args": [], "kwargs": {}, "time_pub": 1.0}
    assert not surely_valid(message, rules_from_schema(_changed(change)))


def test_descriptions_do_not_matter() -> None:
    schema = copy.deepcopy(SCHEMA)
    schema["properties"]["timeout"]["description"] = "changed"
    schema["properties"]["args"]["$comment"] = "a note"
    assert rules_from_schema(schema) == RULES


# --- surely_valid never says "valid" where the schema does not ---

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, 31536000, 31536000.5, 253402300799, 253402300800, -1e-9]),
    st.booleans(),
)
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), NUMBERS, st.text(max_size=300), st.lists(st.integers(), max_size=3)
)
UUIDS = st.one_of(st.text(max_size=300), st.sampled_from(["", "x" * 255, "x" * 256]), ANY_VALUE)
ON_DUPLICATES = st.one_of(st.sampled_from(ON_DUPLICATE_MODES), st.text(max_size=12), ANY_VALUE)
ARGS = st.one_of(st.lists(ANY_VALUE, max_size=3), st.tuples(st.integers()), ANY_VALUE)
KWARGS = st.one_of(st.dictionaries(st.text(max_size=5), ANY_VALUE, max_size=3), ANY_VALUE)
OPTIONAL_KEYS = {
    "timeout": NUMBERS,
    "delay": NUMBERS,
    "on_duplicate": ON_DUPLICATES,
    "bind": ANY_VALUE,
    "guid": ANY_VALUE,
    "channel": ANY_VALUE,
    "other": ANY_VALUE,
}


VALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "uuid": st.text(min_size=1, max_size=255),
    "args": st.lists(ANY_VALUE, max_size=3),
    "kwargs": st.dictionaries(st.text(max_size=5), ANY_VALUE, max_size=3),
    "time_pub": st.floats(0, 253402300799) | st.integers(0, 253402300799),
    "timeout": st.floats(0, 31536000) | st.integers(0, 31536000),
    "delay": st.floats(0, 31536000) | st.integers(0, 31536000),
    "on_duplicate": st.sampled_from(ON_DUPLICATE_MODES),
    "bind": st.booleans(),
}
ANY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "uuid": UUIDS,
    "args": ARGS,
    "kwargs": KWARGS,
    "time_pub": NUMBERS,
    **OPTIONAL_KEYS,
}


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """Task messages with a valid task, each other key mostly valid, sometimes anything."""
    message: dict[str, Any] = {"task": "myapp.tasks.job"}
    keys = ["uuid", "args", "kwargs", "time_pub"]
    keys += draw(st.lists(st.sampled_from(sorted(OPTIONAL_KEYS)), unique=True, max_size=4))
    for key in keys:
        if draw(st.integers(0, 19)) == 0:
            continue  # absent
        valid = key in VALID_VALUES and draw(st.integers(0, 4)) > 0
        message[key] = draw(VALID_VALUES[key] if valid else ANY_VALUES[key])
    return message


# ~18 s, over 70 on a loaded machine: mostly drawing the messages (1,200 pass, few discarded).
@settings(max_examples=examples(1200), deadline=None)
@given(messages())
def test_surely_valid_implies_valid(message: dict[str, Any]) -> None:
    if surely_valid(message):
        assert REFERENCE.is_valid(message), message
        assert validator("task-message").is_valid(message), message


@settings(max_examples=examples(300), deadline=None)
@given(
    timeout=st.none() | st.floats(0, 31536000) | st.integers(0, 31536000),
    delay=st.none() | st.floats(0, 31536000) | st.integers(0, 31536000),
    on_duplicate=st.none() | st.sampled_from(ON_DUPLICATE_MODES),
    bind=st.booleans(),
    uuid=st.text(min_size=1, max_size=255),
)
def test_what_prepare_builds_from_valid_options_takes_the_shortcut(
    timeout: float | None, delay: float | None, on_duplicate: Any, bind: bool, uuid: str
) -> None:
    message: dict[str, Any] = {
        "task": "myapp.tasks.job",
        "uuid": uuid,
        "args": [1],
        "kwargs": {"a": 1},
        "time_pub": time.time(),
    }
    options = {"timeout": timeout, "delay": delay, "on_duplicate": on_duplicate}
    message.update({key: value for key, value in options.items() if value is not None})
    if bind:
        message["bind"] = True
    assert surely_valid(message)
    assert REFERENCE.is_valid(message)


def test_a_message_without_task_or_with_unknown_keys_goes_the_long_way() -> None:
    base = {"task": "a.b", "uuid": "u", "args": [], "kwargs": {}, "time_pub": 1.0}
    assert surely_valid(base)
    assert not surely_valid({k: v for k, v in base.items() if k != "task"} | {"x": 1})
    assert not surely_valid(base | {"guid": "g"})
    assert not surely_valid(base | {"bind": False})  # valid, but not what prepare builds
    assert not surely_valid(base | {"timeout": True})
    assert not surely_valid(base | {"time_pub": math.nan})


# --- prepare_submission: the same result, or the same error, with the shortcuts off ---

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "timeout": NUMBERS | st.text(max_size=3),
    "delay": NUMBERS,
    "on_duplicate": ON_DUPLICATES,
    "bind": st.booleans() | st.integers(0, 1),
    "uuid": UUIDS.filter(lambda value: value is not None),  # None: a new one each time
    "queue": st.sampled_from(["only", "other", "has space", "c" * 64]),
    "extra": st.dictionaries(st.sampled_from(["guid", "tenant", "task", "uuid"]), ANY_VALUE),
}


def _outcome(task: Any, options: dict[str, Any]) -> tuple[Any, ...]:
    try:
        submission = prepare_submission(task, **options)
    except InvalidSubmission as exc:
        return ("refused", str(exc))
    return ("prepared", submission.channel, submission.payloads, dict(submission.message))


def _the_long_way() -> Any:
    return mock.patch.object(messages_module, "surely_valid", return_value=False)


@settings(max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task=st.sampled_from([tasks.add, tasks.send_email, tasks.bound, "support.tasks.add"]),
    args=st.none() | st.lists(JSON_VALUES, max_size=3) | st.just([{1, 2}]) | st.just("abc"),
    kwargs=st.none() | st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3),
    options=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.none(), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({key: OPTION_VALUES[key] for key in keys})
    ),
)
def test_prepare_is_the_same_with_and_without_the_shortcuts(
    task: Any, args: Any, kwargs: Any, options: dict[str, Any]
) -> None:
    options = {"args": args, "kwargs": kwargs, "uuid": "fixed-uuid"} | options
    with mock.patch.object(messages_module.time, "time", return_value=1795957367.9359317):
        fast = _outcome(task, options)
        with _the_long_way():
            slow = _outcome(task, options)
    assert fast == slow


def _text_or_refusal(message: dict[str, Any], *, plain: bool) -> str:
    try:
        return message_text.serialise("t", message, plain=plain)
    except InvalidSubmission as exc:
        return f"refused: {exc}"


@settings(max_examples=examples(400), deadline=None)
@given(
    task=st.text(max_size=20),
    uuid=st.text(max_size=40),
    args=st.lists(JSON_VALUES, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4),
    time_pub=st.floats(min_value=0, max_value=253402300799)
    | st.integers(0, 253402300799)
    | st.just(time.time()),
)
def test_plain_text_is_the_encoder_text(
    task: str, uuid: str, args: list[Any], kwargs: dict[str, Any], time_pub: float
) -> None:
    message = {"task": task, "uuid": uuid, "args": args, "kwargs": kwargs, "time_pub": time_pub}
    expected = _text_or_refusal(message, plain=False)
    assert _text_or_refusal(message, plain=True) == expected
    if not expected.startswith("refused"):  # refused: NaN or infinities in the arguments
        assert expected == json.dumps(message, separators=(",", ":"))


def _nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("depth", [1, 30, 61, 62, 63, 64, 65, 200])
def test_plain_text_refuses_the_same_depths(depth: int) -> None:
    for args, kwargs in (([_nested(depth)], {}), ([], {"deep": _nested(depth)})):
        message = {"task": "a.b", "uuid": "u", "args": args, "kwargs": kwargs, "time_pub": 1.5}
        assert _text_or_refusal(message, plain=True) == _text_or_refusal(message, plain=False)


def test_a_refused_registered_submission_names_the_field_and_the_reason() -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(tasks.add, timeout=31536001)
    assert str(caught.value) == (
        "cannot submit support.tasks.add: timeout: must be at most 31536000, got 31536001"
    )


# --- routes are remembered per config, never across configs ---


def test_a_new_config_is_a_new_route() -> None:
    assert prepare_submission(tasks.add, args=[1, 2]).channel == "only"
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["next"]}}})
    assert prepare_submission(tasks.add, args=[1, 2]).channel == "next"
    reset()
    with pytest.raises(Exception, match="not configured"):
        prepare_submission(tasks.add, args=[1, 2])
    assert prepare_submission(tasks.add, args=[1, 2], queue="given").channel == "given"


def test_signing_follows_the_config() -> None:
    unsigned = prepare_submission(tasks.add, args=[1, 2], queue="only")
    assert json.loads(unsigned.payloads[0])["task"] == "support.tasks.add"
    keys = {"keys": [{"id": "k1", "secret": "s" * 32}]}
    setup(
        {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["only"]}},
            "security": keys,
        }
    )
    signed = json.loads(prepare_submission(tasks.add, args=[1, 2], queue="only").payloads[0])
    assert signed["key_id"] == "k1"
    assert json.loads(signed["body"])["task"] == "support.tasks.add"


def test_remembered_routes_are_bounded() -> None:
    limit = message_routes.MAX_REMEMBERED_ROUTES
    for n in range(limit + 10):
        assert (
            prepare_submission(tasks.add, args=[1, 2], queue=lambda n=n: f"tenant_{n}").channel
            == f"tenant_{n}"
        )
    assert len(message_routes._routes.get(get_settings())) <= limit


def test_an_odd_queue_function_result_is_refused_as_before() -> None:
    for odd in (["a"], 5):
        with pytest.raises(InvalidSubmission, match="queue: "):
            prepare_submission(tasks.add, args=[1, 2], queue=lambda odd=odd: odd)  # type: ignore[arg-type,return-value]


# --- uuids: version 4, unique, never shared with a forked child ---


def test_pooled_uuids_are_version_4_and_unique() -> None:
    values = {uuids.submission_uuid() for _ in range(5 * uuids.BATCH + 3)}
    assert len(values) == 5 * uuids.BATCH + 3
    for value in values:
        parsed = uuid_module.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid_module.RFC_4122, value)


def _report_pool(queue: Any) -> None:
    queue.put((len(uuids._ready), uuids.submission_uuid()))


def test_a_forked_child_never_reuses_the_parents_uuids() -> None:
    uuids.submission_uuid()  # the pool holds uuids when the child is forked
    waiting = set(uuids._ready)
    assert waiting
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_report_pool, args=(results,))
    child.start()
    inherited, drawn = results.get(timeout=30)
    child.join(30)
    assert inherited == 0
    assert drawn not in waiting
