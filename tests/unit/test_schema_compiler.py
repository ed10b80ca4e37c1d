"""The schema compiler agrees with the reference implementation (``jsonschema``) on every value.

The compiled validators decide what the service accepts; ``jsonschema`` only explains. Any
disagreement is a defect: a valid message refused, or an invalid one let through with no
reason to give. So the two are compared on the conformance examples, on every valid example
with one value anywhere in it replaced by an arbitrary one, and on a synthetic schema that
uses every keyword the compiler implements.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.schema import SCHEMA_NAMES, SchemaValidationError, load_schema, validator
from dispatcher.schema.compiler import UnsupportedSchema, compile_schema, ecma_pattern
from dispatcher.schema.validation import Validator
from support.paths import EXAMPLES

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, -1, 0.5, 1.0, 2.0, 255, 256, 63, 64, 10000, 31536000, 31536001])
    | st.text(max_size=12)
    | st.sampled_from(["", "a", "tasks.hello", "a b", "a\n", "x" * 256, "pg_notify", "serial"])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def verdicts(schema: dict[str, Any], instance: Any) -> tuple[bool, bool]:
    """What the compiled validator says, and what the explaining one (jsonschema) says."""
    compiled = compile_schema(schema)(instance)
    explained = not Validator("config", schema).problems(instance)
    return compiled, explained


def valid_examples() -> list[tuple[str, Any]]:
    found = []
    for path in sorted(EXAMPLES.glob("*/valid/*.json")):
        found.append((path.parent.parent.name, json.loads(path.read_text(encoding="utf-8"))))
    return found


def paths_in(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in *value*, the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(paths_in(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(paths_in(item, (*prefix, index)))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copied = copy.deepcopy(value)
    node = copied
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = new
    return copied


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_of_the_project_compiles(name: str) -> None:
    compile_schema(load_schema(name))  # UnsupportedSchema would fail here


@pytest.mark.parametrize(
    "path", sorted(EXAMPLES.glob("*/*/*.json")), ids=lambda p: f"{p.parent.parent.name}/{p.stem}"
)
def test_the_conformance_examples_get_their_verdict(path: Path) -> None:
    instance = json.loads(path.read_text(encoding="utf-8"))
    schema = load_schema(path.parent.parent.name)  # type: ignore[arg-type]
    expected = path.parent.name == "valid"
    assert verdicts(schema, instance) == (expected, expected)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), new=JSON_VALUES)
def test_a_valid_example_with_one_value_replaced_gets_one_verdict(data: Any, new: Any) -> None:
    name, example = data.draw(st.sampled_from(valid_examples()))
    path = data.draw(st.sampled_from(paths_in(example)))
    instance = replaced(example, path, new)
    compiled, explained = verdicts(load_schema(name), instance)
    assert compiled == explained, (name, path, instance)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_valid_example_with_one_key_added_or_removed_gets_one_verdict(data: Any) -> None:
    name, example = data.draw(st.sampled_from(valid_examples()))
    objects = [p for p in paths_in(example) if isinstance(_at(example, p), dict)]
    path = data.draw(st.sampled_from(objects))
    target = copy.deepcopy(_at(example, path))
    if target and data.draw(st.booleans()):
        del target[data.draw(st.sampled_from(sorted(target)))]
    else:
        target[data.draw(st.text(max_size=10) | st.sampled_from(_known_keys(name)))] = data.draw(
            JSON_VALUES
        )
    instance = replaced(example, path, target)
    compiled, explained = verdicts(load_schema(name), instance)
    assert compiled == explained, (name, path, instance)


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _known_keys(name: str) -> list[str]:
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update(k for k in node.get("properties", {}) if isinstance(k, str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema(name))  # type: ignore[arg-type]
    return sorted(keys)


EVERY_KEYWORD: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["kind"],
    "minProperties": 1,
    "maxProperties": 6,
    "properties": {
        "kind": {"enum": ["a", "b", 1, None, [1], {"x": 1}]},
        "fixed": {"const": {"k": [1, 2.0, True]}},
        "count": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
        "ratio": {"type": ["number", "null"], "minimum": -1.5, "maximum": 1.5},
        "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
        "list": {
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "integer"}],
            "items": {"type": "boolean"},
            "minItems": 1,
            "maxItems": 4,
        },
        "set": {"type": "array", "uniqueItems": True},
        "tree": {"$ref": "#/$defs/tree"},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 3}]},
        "exactly_one": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 2}]},
        "all": {"allOf": [{"type": "string"}, {"minLength": 1}]},
        "none": {"not": {"type": "string"}},
        "never": False,
        "anything": True,
    },
    "patternProperties": {"^x_": {"type": "integer"}},
    "propertyNames": {"maxLength": 11},
    "additionalProperties": {"type": ["string", "boolean"]},
    "$defs": {
        "tree": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "value": {},
                "children": {"type": "array", "items": {"$ref": "#/$defs/tree"}},
            },
        }
    },
}

KEYWORD_VALUES = st.fixed_dictionaries(
    {"kind": st.sampled_from(["a", "b", 1, 1.0, True, None, [1], [1.0], {"x": 1}, "c"])},
    optional={
        "fixed": st.sampled_from([{"k": [1, 2, True]}, {"k": [1, 2, 1]}, {"k": [True, 2, 1]}]),
        "count": JSON_LEAVES,
        "ratio": JSON_LEAVES,
        "name": JSON_LEAVES | st.sampled_from(["ab", "abc\n", "Ab", "abcdef", "ab1"]),
        "list": st.lists(JSON_LEAVES, max_size=5),
        "set": st.lists(st.sampled_from([1, 1.0, True, "1", [1], {"a": 1}, None]), max_size=4),
        "tree": JSON_VALUES,
        "either": JSON_LEAVES,
        "exactly_one": JSON_LEAVES,
        "all": JSON_LEAVES,
        "none": JSON_LEAVES,
        "never": JSON_LEAVES,
        "anything": JSON_VALUES,
        "x_1": JSON_LEAVES,
        "other": JSON_LEAVES,
        "much_too_long_key": JSON_LEAVES,
    },
)


@settings(max_examples=1500, deadline=None)
@given(instance=KEYWORD_VALUES)
def test_every_implemented_keyword_agrees_with_the_reference(instance: Any) -> None:
    compiled, explained = verdicts(EVERY_KEYWORD, instance)
    assert compiled == explained, instance


@pytest.mark.parametrize(
    "instance",
    [
        {"kind": "a", "tree": {"value": 1, "children": [{"children": []}]}},
        {"kind": None, "list": ["s", 3, True, False]},
        {"kind": [1.0], "x_9": 3, "other": "text"},
        {"kind": "b", "count": 9.0, "ratio": None, "name": "abc"},
    ],
)
def test_the_synthetic_schema_accepts_what_it_should(instance: Any) -> None:
    assert verdicts(EVERY_KEYWORD, instance) == (True, True)


@pytest.mark.parametrize(
    "instance",
    [
        {"kind": "a", "tree": {"value": 1, "children": [{"extra": 1}]}},  # recursion
        {"kind": True},  # true is not 1
        {"kind": "a", "never": 1},
        {"kind": "a", "x_1": "text"},
        {"kind": "a", "other": 3},
        {"kind": "a", "much_too_long_key": "x"},
        {"kind": "a", "set": [1, 1.0]},
        {"kind": "a", "exactly_one": 3},  # both branches
        {"kind": "a", "name": "abc\n"},  # ECMA-262: '$' is the very end
        {"kind": "a", "count": 10},
        {"kind": "a", "ratio": float("nan")},
    ],
)
def test_the_synthetic_schema_refuses_what_it_should(instance: Any) -> None:
    assert compile_schema(EVERY_KEYWORD)(instance) is False


def test_a_task_name_with_a_final_newline_is_refused_with_the_pattern_named() -> None:
    checker = validator("task-message")
    assert not checker.is_valid({"task": "tasks.hello\n"})
    with pytest.raises(SchemaValidationError) as caught:
        checker.validate({"task": "tasks.hello\n"})
    assert str(caught.value).count("task:") == 1
    assert "JSON cannot represent" not in str(caught.value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "dependentRequired": {"a": ["b"]}},
        {"$ref": "https://example.com/other.json"},
        {"type": "strange"},
        {"if": {"type": "string"}, "then": {"minLength": 2}},
    ],
)
def test_a_schema_the_compiler_does_not_implement_is_refused_and_left_to_jsonschema(
    schema: dict[str, Any],
) -> None:
    with pytest.raises(UnsupportedSchema):
        compile_schema(schema)


@pytest.mark.parametrize("depth", [60, 400])
def test_a_schema_nested_past_pythons_limits_is_still_checked(depth: int) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    instance: Any = 1
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
        instance = {"a": instance}
    checker = Validator("config", schema)
    assert checker.is_valid(instance)
    assert checker.is_valid({"b": 1})
    broken: Any = "x"
    for _ in range(depth):
        broken = {"a": broken}
    assert not checker.is_valid(broken)


def test_a_plugin_schema_with_other_keywords_is_still_checked() -> None:
    checker = Validator("config", {"type": "object", "dependentRequired": {"a": ["b"]}})
    assert checker.is_valid({"a": 1, "b": 2})
    assert not checker.is_valid({"a": 1})
    assert checker.problems({"a": 1})


def test_a_tuple_is_an_array_as_the_encoder_writes_it() -> None:
    checker = validator("task-message")
    assert checker.is_valid({"task": "a", "args": (1, 2)})
    assert not checker.problems({"task": "a", "args": (1, 2)})


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^a$", "a", True),
        ("^a$", "a\n", False),
        ("^a[$]$", "a$", True),
        (r"^a\$$", "a$", True),
        ("^(a|b)$", "b\n", False),
        ("a", "xay", True),
    ],
)
def test_patterns_have_ecma_anchors(pattern: str, text: str, matches: bool) -> None:
    assert (ecma_pattern(pattern).search(text) is not None) is matches
    assert Validator("config", {"pattern": pattern}).is_valid(text) is matches
    assert (not Validator("config", {"pattern": pattern}).problems(text)) is matches
