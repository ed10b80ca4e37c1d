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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.schema import SCHEMA_NAMES, SchemaValidationError, load_schema, validator
from dispatcher.schema.compiler import UnsupportedSchema, compile_schema
from dispatcher.schema.patterns import ecma_pattern
from dispatcher.schema.validation import Validator
from support.examples import examples
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


_BUILT: dict[int, tuple[dict[str, Any], Callable[[Any], bool], Validator]] = {}


def verdicts(schema: dict[str, Any], instance: Any) -> tuple[bool, bool]:
    """What the compiled validator says, and what the explaining one (jsonschema) says."""
    built = _BUILT.get(id(schema))
    if built is None or built[0] is not schema:  # compiled once per schema object
        built = _BUILT[id(schema)] = (schema, compile_schema(schema), Validator("config", schema))
    _, compiled, explaining = built
    return compiled(instance), not explaining.problems(instance)


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
    compile_schema(load_schema(name))  # type: ignore[arg-type]  # UnsupportedSchema fails


@pytest.mark.parametrize(
    "path", sorted(EXAMPLES.glob("*/*/*.json")), ids=lambda p: f"{p.parent.parent.name}/{p.stem}"
)
def test_the_conformance_examples_get_their_verdict(path: Path) -> None:
    instance = json.loads(path.read_text(encoding="utf-8"))
    schema = load_schema(path.parent.parent.name)  # type: ignore[arg-type]
    expected = path.parent.name == "valid"
    assert verdicts(schema, instance) == (expected, expected)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), new=JSON_VALUES)
def test_a_valid_example_with_one_value_replaced_gets_one_verdict(data: Any, new: Any) -> None:
    name, example = data.draw(st.sampled_from(valid_examples()))
    path = data.draw(st.sampled_from(paths_in(example)))
    instance = replaced(example, path, new)
    compiled, explained = verdicts(load_schema(name), instance)
    assert compiled == explained, (name, path, instance)


@settings(max_examples=examples(200), deadline=None)
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


@settings(max_examples=examples(700), deadline=None)
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
        ("^[]$]", "$", True),  # "]" first in a class is a member, as re reads it
        ("^[]$]", "]", True),
        ("^[]$]$", "]\n", False),
        ("^[^]$]$", "a", True),
        ("^[^]$]$", "$", False),
        ("^[^^]$", "a", True),
        ("^[^^]$", "a\n", False),
        ("^[^^]$", "^", False),
    ],
)
def test_patterns_have_ecma_anchors(pattern: str, text: str, matches: bool) -> None:
    assert (ecma_pattern(pattern).search(text) is not None) is matches
    assert Validator("config", {"pattern": pattern}).is_valid(text) is matches
    assert (not Validator("config", {"pattern": pattern}).problems(text)) is matches


NAN = float("nan")


@pytest.mark.parametrize(
    ("schema", "instance", "expected"),
    [
        # jsonschema alone compares only neighbours once sorted: [1] sorts beside [true].
        ({"uniqueItems": True}, [[1], [True], [1]], False),
        ({"uniqueItems": True}, [{"a": [1]}, {"a": [True]}, {"a": [1]}], False),
        ({"uniqueItems": True}, [[1], [True], [1.5]], True),
        ({"uniqueItems": True}, [1, NAN, 1], False),
        ({"uniqueItems": True}, [NAN, NAN], False),  # one object twice, as json.loads makes
        ({"const": [NAN]}, [NAN], True),  # jsonschema before 4.22 alone: [nan] is not [nan]
        ({"enum": [[NAN]]}, [NAN], True),  # jsonschema 4.21 alone
        # patternProperties and additionalProperties match keys as ``pattern`` does
        ({"patternProperties": {"^x$": False}}, {"x\n": 1}, True),
        ({"patternProperties": {"^x$": {}}, "additionalProperties": False}, {"x\n": 1}, False),
        ({"patternProperties": {"^x$": {}}, "additionalProperties": False}, {"x": 1}, True),
        (
            {"patternProperties": {"^x$": {}}, "additionalProperties": {"type": "string"}},
            {"x\n": 1},
            False,
        ),
        ({"patternProperties": {"^1": {}}, "additionalProperties": False}, {1: 1}, False),
        ({"patternProperties": {"^1": False}}, {1: 1}, True),
        # a $ref is a URI fragment: percent-decoded before it is read as a JSON pointer
        (
            {
                "$defs": {"a%20b": {"type": "string"}, "a b": {"type": "integer"}},
                "$ref": "#/$defs/a%20b",
            },
            1,
            True,
        ),
    ],
)
def test_values_the_two_validators_once_disagreed_on(
    schema: dict[str, Any], instance: Any, expected: bool
) -> None:
    assert verdicts(schema, instance) == (expected, expected)


@pytest.mark.parametrize(
    ("schema", "instance", "explained"),
    [
        ({"enum": [[1]]}, [True], "(root): expected one of [1]"),
        (
            {"properties": {"x": {"enum": [[0], "a"]}}},
            {"x": [False]},
            "x: expected one of [0], 'a'",
        ),
        ({"const": {"a": [1]}}, {"a": [True]}, "(root): must be {'a': [1]}"),
    ],
)
def test_enum_and_const_are_explained_with_json_equality(
    schema: dict[str, Any], instance: Any, explained: str
) -> None:
    """``true`` is not ``1`` inside an array or an object either: the refusal says what was
    expected, and where (jsonschema before 4.21 compared enum values as Python does, found
    nothing to explain, and the refusal was a bare "does not match the schema")."""
    checker = Validator("config", schema)
    assert not checker.is_valid(instance)
    assert [str(p) for p in checker.problems(instance, quote_values=False)] == [explained]


def _canonical(value: Any) -> Any:
    """A hashable form of a JSON value, equal exactly when the values are JSON-equal."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", value)  # 1 == 1.0 and hash(1) == hash(1.0)
    if isinstance(value, (list, tuple)):
        return ("array", tuple(map(_canonical, value)))
    return ("object", frozenset((key, _canonical(item)) for key, item in value.items()))


SMALL_JSON = st.recursive(
    st.sampled_from([0, 1, 1.0, True, False, 0.0, -0.0, None, "1", "", 2**64, float(2**64)]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("ab"), inner),
    max_leaves=6,
)


@settings(max_examples=examples(250), deadline=None)
@given(items=st.lists(SMALL_JSON, max_size=5))
def test_unique_items_means_no_two_json_equal_values(items: list[Any]) -> None:
    expected = len({_canonical(item) for item in items}) == len(items)
    assert verdicts({"uniqueItems": True}, items) == (expected, expected)


# Every pair was compared: 16,000 channels and as many queues took 38 s to load.
@pytest.mark.timeout(60)
def test_unique_items_of_long_arrays_are_checked_without_comparing_every_pair() -> None:
    schema = {"uniqueItems": True}
    names = [f"channel_{n}" for n in range(20_000)]
    objects = [{"n": n, "list": [n, True, None]} for n in range(20_000)]
    for items in (names, objects):
        assert verdicts(schema, items) == (True, True)
        assert verdicts(schema, [*items, items[-1]]) == (False, False)
    # JSON's equality still: 1.0 is 1, true is not; a value of a type JSON does not know,
    # unhashable, is compared pair by pair.
    assert verdicts(schema, [*objects, {"list": [19_999.0, True, None], "n": 19_999}]) == (
        False,
        False,
    )
    assert verdicts(schema, [*objects, {"list": [19_999, 1, None], "n": 19_999}]) == (True, True)
    assert compile_schema(schema)([*names[:100], {1, 2}, names[0]]) is False


def test_each_repeated_item_is_named_at_its_index_not_the_whole_array() -> None:
    items = [f"h_scale_c{n}" for n in range(4000)]
    items[3001], items[3500] = items[0], items[7]
    problems = Validator("config", {"uniqueItems": True}).problems(items)
    assert [str(problem) for problem in problems] == [
        "[3001]: repeats item [0] (each may be given once)",
        "[3500]: repeats item [7] (each may be given once)",
    ]
    many = Validator("config", {"uniqueItems": True}).problems(["a"] * 30)
    assert [str(problem) for problem in many] == [
        "(root): 29 items repeat earlier ones; the first 10 are named",
        *(f"[{n}]: repeats item [0] (each may be given once)" for n in range(1, 11)),
    ]


KEYS = st.sampled_from(["x", "x\n", "x_1", "x_1\n", "y", "$", "]", "a$b", "é", "1"])
PATTERNS = st.sampled_from(["^x$", "^x_", "1$", "[$]", r"\$", "^[]$]", "^(x|y)$", "b$|^y"])


@settings(max_examples=examples(250), deadline=None)
@given(
    patterns=st.dictionaries(PATTERNS, st.booleans() | st.just({"type": "integer"}), max_size=3),
    properties=st.dictionaries(KEYS, st.booleans(), max_size=2),
    additional=st.booleans() | st.just({"type": "string"}),
    instance=st.dictionaries(KEYS | st.integers(0, 2), st.integers(0, 1) | st.just("s")),
)
def test_keys_are_matched_alike_by_both_validators(
    patterns: dict[str, Any], properties: dict[str, Any], additional: Any, instance: Any
) -> None:
    schema = {
        "properties": properties,
        "patternProperties": patterns,
        "additionalProperties": additional,
    }
    compiled, explained = verdicts(schema, instance)
    assert compiled == explained, (schema, instance)


def test_a_key_refused_for_a_final_newline_is_named_in_the_problems() -> None:
    schema = {"type": "object", "patternProperties": {"^x$": {}}, "additionalProperties": False}
    checker = Validator("config", schema)
    with pytest.raises(SchemaValidationError) as caught:
        checker.validate({"x": 1, "x\n": 2})
    assert [p.path for p in caught.value.problems] == [("x\n",)]


@pytest.mark.parametrize(
    "schema",
    [
        # a $ref inside a subschema with its own $id is resolved against that $id
        {
            "$defs": {
                "a": {"$id": "urn:other", "$defs": {"b": {}}, "allOf": [{"$ref": "#/$defs/b"}]},
                "b": {"type": "string"},
            },
            "$ref": "#/$defs/a",
        },
        {"$defs": {"a": {"$id": "urn:other", "type": "string"}}, "$ref": "#/$defs/a"},
        {"uniqueItems": 1},  # jsonschema would take it as true
        {"type": [["string"]]},
        {1: {}, "a": {}},
    ],
)
def test_a_malformed_or_unusual_schema_is_refused_as_unsupported(schema: Any) -> None:
    with pytest.raises(UnsupportedSchema):
        compile_schema(schema)


class _Sneaky(int):
    """An int whose text is Python code, as a plug-in's schema object could hold."""

    def __format__(self, spec: str) -> str:
        return "0 or True"

    def __repr__(self) -> str:
        return "0 or True"

    __str__ = __repr__


@pytest.mark.parametrize("keyword", ["minLength", "maxItems", "minProperties"])
def test_no_text_of_a_schema_value_becomes_code(keyword: str) -> None:
    check = compile_schema({keyword: _Sneaky(1)})
    small = {"minLength": "a", "maxItems": [1], "minProperties": {"a": 1}}[keyword]
    assert check(small) is True
