"""decode_json: the one decoder for text from outside, bounded in depth, strict on numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.schema import (
    MAX_NESTING_DEPTH,
    DecodeError,
    decode_json,
    decode_json_sharing,
    exceeds_depth,
)
from dispatcher.schema.decoding import _may_exceed_depth
from support.examples import examples


def nested(depth: int, opener: str = "[") -> str:
    closer = "]" if opener == "[" else "}"
    inner = "1" if opener == "[" else '"a":1'
    if opener == "{":
        return '{"a":' * (depth - 1) + "{" + inner + "}" + "}" * (depth - 1)
    return opener * depth + inner + closer * depth


def test_a_typical_message_decodes_as_json_loads_does() -> None:
    text = '{"task":"a.b","uuid":"u","args":[1,2.5,"x",null,true],"kwargs":{"k":[{}]}}'
    assert decode_json(text) == json.loads(text)
    assert decode_json(text.encode()) == json.loads(text)


@pytest.mark.parametrize("opener", ["[", "{"])
def test_nesting_up_to_the_limit_is_accepted_and_one_more_is_refused(opener: str) -> None:
    assert exceeds_depth(decode_json(nested(MAX_NESTING_DEPTH, opener))) is False
    with pytest.raises(DecodeError) as caught:
        decode_json(nested(MAX_NESTING_DEPTH + 1, opener))
    assert caught.value.reason == "too_deep"
    assert (
        str(caught.value) == f"arrays and objects nested more than {MAX_NESTING_DEPTH} levels deep"
    )


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_nesting_far_beyond_the_stack_is_refused_as_too_deep(depth: int) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_json("[" * depth + "]" * depth)
    assert caught.value.reason == "too_deep"


def test_many_shallow_containers_are_not_too_deep() -> None:
    text = json.dumps({"args": [[{"a": [i]} for i in range(5_000)]]})
    assert len(decode_json(text)["args"][0]) == 5_000


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"s": "[" * 5_000, "t": "{" * 5_000})
    assert decode_json(text)["s"] == "[" * 5_000


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("NaN", "NaN is not valid JSON"),
        ('{"a": Infinity}', "Infinity is not valid JSON"),
        ("[-Infinity]", "-Infinity is not valid JSON"),
        ('{"t": 1e400}', "number 1e400 is out of range"),
        ("[-1e400]", "number -1e400 is out of range"),
        ("1" * 400 + ".0", "is out of range"),
        ("[" + "9" * 5_000 + "]", "[0]: the integer has more than 4300 digits)"),
        ("9" * 5_000, "(an integer has more than 4300 digits)"),
        ("{'a': 1}", "Expecting property name"),
        ("", "Expecting value"),
        ('{"a": 1} x', "Extra data"),
    ],
)
def test_what_is_not_strict_json_is_refused(text: str, said: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_json(text)
    assert caught.value.reason == "not_json"
    assert str(caught.value).startswith("not JSON (")
    assert said in str(caught.value)


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(DecodeError, match=r"invalid UTF-8 at byte 2") as caught:
        decode_json(b'["\xff"]')
    assert caught.value.reason == "not_json"


def test_decode_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        decode_json("nope")


def test_large_but_finite_numbers_are_kept() -> None:
    assert decode_json("[1e308, -1e308, 5e-324, 1e-400]") == [1e308, -1e308, 5e-324, 0.0]
    assert decode_json("[" + "9" * 4_000 + "]") == [int("9" * 4_000)]


def test_odd_strings_decode() -> None:
    value = decode_json(r'["\u0000", "\n", "\u2028", "\ud800", "\udc00\ud83d\ude00"]')
    assert value == ["\x00", "\n", "\u2028", "\ud800", "\udc00\U0001f600"]


def test_exceeds_depth_handles_values_that_contain_themselves() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert exceeds_depth(loop) is True
    assert exceeds_depth({"a": (1, [2])}, 3) is False
    assert exceeds_depth({"a": (1, [2])}, 2) is True
    assert exceeds_depth("scalar", 0) is False


def test_a_custom_limit_applies() -> None:
    assert decode_json("[[1]]", max_depth=2) == [[1]]
    with pytest.raises(DecodeError):
        decode_json("[[[1]]]", max_depth=2)


json_values = st.recursive(
    st.none()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.sampled_from('[]{}"\\\\/ué\u2028\ud800\x00'), max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=examples(300), deadline=None)
@given(value=json_values, limit=st.integers(0, 12), ascii_only=st.booleans(), indent=st.booleans())
def test_depth_read_from_the_text_agrees_with_the_depth_of_the_value(
    value: Any, limit: int, ascii_only: bool, indent: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=1 if indent else None)
    if exceeds_depth(value, limit):
        with pytest.raises(DecodeError) as caught:
            decode_json(text, max_depth=limit)
        assert caught.value.reason == "too_deep"
    else:
        assert decode_json(text, max_depth=limit) == value


# Long texts (1024 characters and more) have their brackets looked for with str.find, short
# ones counted: either way the answer must be the count's.
bracket_pieces = st.sampled_from(["[", "{", "]", "}", '"', "\\", "é", "x" * 150, " " * 40])


@settings(max_examples=examples(500), deadline=None)
@given(pieces=st.lists(bracket_pieces, max_size=90), limit=st.integers(0, 70))
def test_the_bracket_prefilter_says_what_counting_the_brackets_says(
    pieces: list[str], limit: int
) -> None:
    text = "".join(pieces)
    assert _may_exceed_depth(text, limit) == (text.count("[") + text.count("{") > limit)


@settings(max_examples=examples(300), deadline=None)
@given(
    value=json_values,
    limit=st.integers(1, 20),
    padding=st.integers(0, 3_000),
    first=st.booleans(),
)
def test_depth_of_long_texts_agrees_with_the_depth_of_the_value(
    value: Any, limit: int, padding: int, first: bool
) -> None:
    # A long string beside the value: the text is long, its brackets few or many.
    wrapped = ["y" * padding, value] if first else [value, "y" * padding]
    text = json.dumps(wrapped)
    if exceeds_depth(wrapped, limit):
        with pytest.raises(DecodeError) as caught:
            decode_json(text, max_depth=limit)
        assert caught.value.reason == "too_deep"
    else:
        assert decode_json(text, max_depth=limit) == wrapped


@pytest.mark.parametrize("brackets", [15, 16, 17, 63, 64, 65])
def test_a_long_text_is_refused_exactly_when_too_deep(brackets: int) -> None:
    padding = "z" * 5_000
    text = "[" * brackets + json.dumps(padding) + "]" * brackets
    if brackets > MAX_NESTING_DEPTH:
        with pytest.raises(DecodeError, match="nested more than"):
            decode_json(text)
    else:
        assert exceeds_depth(decode_json(text), brackets) is False


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1}',
        ' {"a":1}',
        '{"a":1} ',
        '\n\t{"a":[1, 2]}\r\n',
        "1",
        " 1 ",
        '"text"',
        "[]",
        '{"a":1} x',
        '{"a":1}{"b":2}',
        "[1,]",
        "",
        "   ",
        "nul",
        '{"a":1',
        '{"a":NaN}',
        "1e400",
    ],
)
def test_text_with_or_without_outer_whitespace_gets_the_verdict_of_the_reference_decoder(
    text: str,
) -> None:
    strict = json.JSONDecoder(parse_constant=lambda name: 1 / 0)
    try:
        expected: Any = strict.decode(text)
    except (ValueError, ZeroDivisionError):
        with pytest.raises(DecodeError, match="not JSON"):
            decode_json(text)
    else:
        if expected == float("inf"):
            with pytest.raises(DecodeError, match="out of range"):
                decode_json(text)
        else:
            assert decode_json(text) == expected


@settings(max_examples=examples(300), deadline=None)
@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=10,
    ),
    before=st.sampled_from(["", " ", "\n"]),
    after=st.sampled_from(["", " ", "\n", " x", "]"]),
)
def test_decoding_agrees_with_json_loads_on_any_value_and_surroundings(
    value: Any, before: str, after: str
) -> None:
    text = before + json.dumps(value) + after
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(DecodeError):
            decode_json(text)
    else:
        assert decode_json(text) == expected == value


def _verdict(decode: Any, text: str, limit: int) -> tuple[str, Any]:
    try:
        return "value", decode(text, max_depth=limit)
    except DecodeError as exc:
        return exc.reason, (str(exc), exc.uuid)


SHARING_CASES = [
    '{"task": "a.b", "uuid": "u1", "args": [1, 2.5, -3e5, null, true, {"k": [1]}]}',
    '{"uuid": "u2", "n": NaN}',
    '{"uuid": "u3", "n": 1e400}',
    '{"uuid": "u4", "n": ' + "9" * 5_000 + "}",
    "[" * 40 + "]" * 40,
    '{"uuid": "u5", "a": ' + "[" * 40 + "]" * 40 + "}",
    "[" * 100_000,
    "{'a': 1}",
    '{"a": 1} x',
    "",
]


@pytest.mark.parametrize("text", SHARING_CASES)
def test_the_decoder_for_worker_threads_gives_the_verdicts_of_the_other(text: str) -> None:
    assert _verdict(decode_json_sharing, text, 32) == _verdict(decode_json, text, 32)


@settings(max_examples=examples(300), deadline=None)
@given(value=json_values, limit=st.integers(0, 12), indent=st.booleans())
def test_the_decoder_for_worker_threads_agrees_on_any_value(
    value: Any, limit: int, indent: bool
) -> None:
    text = json.dumps(value, indent=1 if indent else None)
    assert _verdict(decode_json_sharing, text, limit) == _verdict(decode_json, text, limit)
