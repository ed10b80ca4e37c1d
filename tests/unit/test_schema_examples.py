"""The conformance vectors in schemas/examples: what other publishers are tested against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dispatcher.schema import SCHEMA_NAMES, load_schema, validator
from support.paths import EXAMPLES

EXPECTED_ERRORS: dict[str, str] = json.loads(
    (EXAMPLES / "expected-errors.json").read_text(encoding="utf-8")
)["errors"]


def _examples(kind: str) -> list[Path]:
    return sorted(EXAMPLES.glob(f"*/{kind}/*.json"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _schema_of(path: Path) -> str:
    return path.parent.parent.name


def test_enough_examples_for_every_schema() -> None:
    valid, invalid = _examples("valid"), _examples("invalid")
    assert len(valid) >= 10
    assert len(invalid) >= 15
    for name in SCHEMA_NAMES:
        assert (EXAMPLES / name / "valid").is_dir(), name
        assert (EXAMPLES / name / "invalid").is_dir(), name
    assert {_schema_of(p) for p in valid + invalid} == set(SCHEMA_NAMES)


def test_every_invalid_example_has_an_expected_error_and_no_more() -> None:
    listed = {str(path.relative_to(EXAMPLES)) for path in _examples("invalid")}
    assert set(EXPECTED_ERRORS) == listed


@pytest.mark.parametrize("path", _examples("valid"), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_valid_example_validates(path: Path) -> None:
    instance = _load(path)
    checker = validator(_schema_of(path))  # type: ignore[arg-type]
    assert checker.problems(instance) == []
    assert checker.is_valid(instance)
    checker.validate(instance)


@pytest.mark.parametrize("path", _examples("invalid"), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_invalid_example_fails_at_the_expected_path(path: Path) -> None:
    instance = _load(path)
    name = _schema_of(path)
    assert not validator(name).is_valid(instance)  # type: ignore[arg-type]
    reference = jsonschema.Draft202012Validator(load_schema(name))  # type: ignore[arg-type]
    pointers = {
        "".join(f"/{part}" for part in error.absolute_path)
        for error in reference.iter_errors(instance)
    }
    assert pointers == {EXPECTED_ERRORS[str(path.relative_to(EXAMPLES))]}
