"""``duplicate_identity``: numbers in one canonical form, strings left as they are."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.schema import duplicate_identity
from dispatcher.schema.identity import canonical_number
from support.examples import examples


@pytest.mark.parametrize(
    ("args", "written"),
    [
        ([1e16, 1e-7, 1e21], "[10000000000000000,0.0000001,1000000000000000000000]"),
        ([-0.0, 0.0, 1.0, 1, -1.5e-10], "[0.0,0.0,1.0,1,-0.00000000015]"),
        (["1e+16", "-0.0", 'q"1e-7'], '["1e+16","-0.0","q\\"1e-7"]'),
        ([{"k1e+5": 2e16}], '[{"k1e+5":20000000000000000}]'),
    ],
)
def test_numbers_are_written_in_plain_decimal(args: list[Any], written: str) -> None:
    assert duplicate_identity({"task": "t.x", "args": args}) == f'["t.x",{written},{{}}]'


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=examples(300), deadline=None)
@given(args=st.lists(json_values, max_size=4))
def test_the_identity_holds_the_same_values_with_no_exponent(args: list[Any]) -> None:
    text = duplicate_identity({"task": "t.x", "args": args})
    numbers: list[str] = []

    def number(written: str) -> Decimal:
        numbers.append(written)
        return Decimal(written)

    as_written = json.dumps(["t.x", args, {}])
    expected = json.loads(as_written, parse_float=Decimal, parse_int=Decimal)
    assert json.loads(text, parse_float=number, parse_int=number) == expected
    assert not [n for n in numbers if "e" in n.lower() or (n.startswith("-") and not Decimal(n))]


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("10.50", "10.5"),  # trailing zeros go: a service reads the double 10.5
        ("100.000", "100.0"),  # an integral float below 1e16 keeps one
        ("1.0", "1.0"),
        ("12345678901234567890.5", "12345678901234567000"),  # the double's digits
        ("0.10000000000000000001", "0.1"),
        ("1.50e1", "15.0"),
        ("1e5", "100000"),  # no point left: an integer, as jsonb stores it
        ("2.5e1", "25"),
        ("1e-400", "0.0"),  # too small for a double: a service reads 0.0
        ("-1e-400", "0.0"),
        ("-0", "0"),
    ],
)
def test_a_number_with_a_point_is_written_as_the_double_a_service_reads(
    text: str, written: str
) -> None:
    assert canonical_number(text) == written
