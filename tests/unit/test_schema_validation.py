"""Validators and explain(): the fast path agrees with jsonschema, and errors read well."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.schema import SCHEMA_NAMES, SchemaValidationError, explain, validator
from support.examples import examples

TASK = {"task": "myapp.tasks.send_email"}


@pytest.mark.parametrize(
    ("instance", "lines"),
    [
        ({"uuid": "x"}, ["task: is required"]),
        ([1, 2], ["(root): expected object, got array [1, 2]"]),
        ({**TASK, "timeout": -1}, ["timeout: must be at least 0, got -1"]),
        ({**TASK, "timeout": "5"}, ["timeout: expected number, got string '5'"]),
        ({**TASK, "delay": 1e12}, ["delay: must be at most 31536000, got 1000000000000.0"]),
        (
            {**TASK, "on_duplicate": "x"},
            ["on_duplicate: 'x' is not one of 'parallel', 'discard', 'serial', 'queue_one'"],
        ),
        ({**TASK, "bind": 1}, ["bind: expected boolean, got integer 1"]),
        (
            {"task": "lambda: 1", "args": {}},
            [
                "args: expected array, got object {}",
                "task: 'lambda: 1' is not a valid task name (dotted Python identifiers in "
                "ASCII such as 'myapp.tasks.send_email', at most 255 characters)",
            ],
        ),
    ],
)
def test_task_message_explanations(instance: Any, lines: list[str]) -> None:
    assert explain("task-message", instance) == lines


LONG = "x" * 3000


@pytest.mark.parametrize(
    ("instance", "lines"),
    [
        (
            {**TASK, "bind": LONG, "timeout": -1},
            [
                f"bind: expected boolean, got string '{'x' * 80}...' (2920 more characters)",
                "timeout: must be at least 0, got -1",
            ],
        ),
        (
            {**TASK, "args": {}, "kwargs": list(range(1000))},
            [
                "args: expected array, got object {}",
                f"kwargs: expected object, got array {repr(list(range(1000)))[:80]}... "
                f"({len(repr(list(range(1000)))) - 80} more characters)",
            ],
        ),
        (
            {"control": "alive", LONG: 1},
            [f"['{'x' * 80}...' (2920 more characters)]: unknown key (expected one of: contr"],
        ),
        ({"task": "a." + LONG}, [f"task: 'a.{'x' * 78}...' (2922 more characters) is not "]),
    ],
)
def test_long_values_are_quoted_cut_short(instance: Any, lines: list[str]) -> None:
    explained = explain("control-message" if "control" in instance else "task-message", instance)
    assert len(explained) == len(lines), explained
    for line, start in zip(explained, lines, strict=True):
        assert line.startswith(start), line
        assert len(line) < 400, line


def test_control_message_explanations() -> None:
    assert explain(
        "control-message", {"control": "_find_tasks", "reply_to": "has space", "delay": 1}
    ) == [
        "control: '_find_tasks' is not a valid command name (lower-case ASCII letters, "
        "digits and '_', starting with a letter, at most 63 bytes)",
        "delay: unknown key (expected one of: control, control_data, reply_to, time_pub, uuid)",
        "reply_to: 'has space' is not a valid channel name (1-63 bytes of ASCII letters, "
        "digits, '_', '.', '-' or ':')",
    ]


def test_valid_instance_has_nothing_to_explain() -> None:
    assert explain("task-message", TASK) == []


def test_validate_raises_with_every_problem() -> None:
    with pytest.raises(SchemaValidationError) as caught:
        validator("chunk-envelope").validate({"__dispatcherd_chunk__": "v2", "index": -1})
    error = caught.value
    assert error.schema == "chunk-envelope"
    assert [str(p) for p in error.problems] == [
        "__dispatcherd_chunk__: must be 'v1', got 'v2'",
        "index: must be at least 0, got -1",
        "message_id: is required",
        "payload: is required",
        "total: is required",
    ]
    assert str(error).startswith("__dispatcherd_chunk__: must be 'v1', got 'v2'; index: ")


def test_python_values_outside_json_are_judged_not_crashed_on() -> None:
    checker = validator("task-message")
    assert checker.is_valid({**TASK, "kwargs": {1: "int key"}}) is True
    assert checker.is_valid({**TASK, "args": {1, 2}}) is False
    with pytest.raises(SchemaValidationError) as caught:
        checker.validate({**TASK, "time_pub": float("nan")})
    assert str(caught.value) == "time_pub: nan is not valid in JSON"
    with pytest.raises(SchemaValidationError, match="time_pub: must be at most 253402300799"):
        checker.validate({**TASK, "time_pub": float("inf")})


NO_JSON_NUMBER = "which is no number of JSON: give an int or a float"


def test_validator_is_compiled_once() -> None:
    assert validator("config") is validator("config")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
task_keys = st.sampled_from(
    ["task", "uuid", "args", "kwargs", "timeout", "delay", "on_duplicate", "bind", "time_pub"]
)
candidate_values = (
    json_values
    | st.sampled_from(["myapp.tasks.x", "parallel", "serial", "lambda: 1", ""])
    | st.floats(min_value=-10, max_value=4e7)
)
message_like = st.dictionaries(task_keys | st.text(max_size=5), candidate_values, max_size=6)


@settings(max_examples=examples(300), deadline=None)
@given(instance=message_like, name=st.sampled_from(SCHEMA_NAMES))
def test_compiled_validator_agrees_with_jsonschema(instance: dict[str, Any], name: str) -> None:
    checker = validator(name)  # type: ignore[arg-type]
    instance = json.loads(json.dumps(instance))  # what a decoder hands over
    assert checker.is_valid(instance) == (checker.problems(instance) == [])


ODD_VALUES = [
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("1.5"),
    Fraction(1, 3),
    complex(1, 1),
    float("nan"),
    float("-inf"),
    datetime.timedelta(seconds=1),
    object(),
]
"""Values no JSON decoder makes: a Decimal NaN raises when jsonschema compares it."""


@settings(max_examples=examples(300), deadline=None)
@given(
    instance=st.dictionaries(task_keys, candidate_values | st.sampled_from(ODD_VALUES), max_size=6),
    name=st.sampled_from(SCHEMA_NAMES),
)
def test_a_refused_document_is_always_explained_whatever_it_holds(
    instance: dict[str, Any], name: str
) -> None:
    checker = validator(name)  # type: ignore[arg-type]
    if checker.is_valid(instance):
        return
    for quote_values in (True, False):
        problems = checker.problems(instance, quote_values=quote_values)
        assert problems, instance
        assert all(problem.reason for problem in problems)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (Decimal("NaN"), "expected number, got Decimal('NaN'), " + NO_JSON_NUMBER),
        (Fraction(1, 3), "expected number, got Fraction(1, 3), " + NO_JSON_NUMBER),
        (float("nan"), "nan is not valid in JSON"),
    ],
)
def test_a_number_json_does_not_have_is_named_as_such(value: Any, said: str) -> None:
    assert explain("task-message", {**TASK, "timeout": value}) == [f"timeout: {said}"]


@pytest.mark.parametrize(
    ("schema", "value", "quoted", "unquoted"),
    [
        ({"minLength": 1}, "", "'' should be non-empty", "too short (at least 1 character)"),
        ({"minLength": 3}, "ab", "'ab' is too short (at least 3 characters)", None),
        ({"maxLength": 0}, "a", "'a' is too long (at most 0 characters)", None),
        ({"minItems": 1}, [], "[] is too short (at least 1 item)", "expected at least 1 item"),
        ({"maxItems": 0}, [1], "[1] is too long (at most 0 items)", "expected at most 0 items"),
        ({"minProperties": 1}, {}, "{} is too small (at least 1 key)", None),
        ({"maxProperties": 0}, {"a": 1}, "{'a': 1} is too large (at most 0 keys)", None),
        (
            {"prefixItems": [{}], "items": False},
            [1, 2, 3],
            "[1, 2, 3] is too long (at most 1 item)",
            "expected at most 1 item",
        ),
    ],
)
def test_counted_bounds_are_worded_alike_at_every_jsonschema_version(
    schema: dict[str, Any], value: Any, quoted: str, unquoted: str | None
) -> None:
    # jsonschema 4.21 changed its own words for these (``'' is too short`` became ``''
    # should be non-empty``): the problems do not depend on the version installed.
    import jsonschema

    from dispatcher.schema.errors import problems_from_errors

    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(value))
    assert [p.reason for p in problems_from_errors(errors)] == [quoted]
    if unquoted is not None:
        assert [p.reason for p in problems_from_errors(errors, quote_values=False)] == [unquoted]
