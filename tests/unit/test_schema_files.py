"""The schema files: one source of truth, complete metadata, valid draft 2020-12."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from dispatcher.schema import SCHEMA_NAMES, load_schema, schema_text
from support.paths import SCHEMA_PACKAGE_COPY, SCHEMAS

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def test_the_six_schemas_are_shipped() -> None:
    assert set(SCHEMA_NAMES) == {
        "task-message",
        "control-message",
        "control-reply",
        "chunk-envelope",
        "signed-envelope",
        "config",
    }
    on_disk = {path.name.removesuffix(".schema.json") for path in SCHEMAS.glob("*.schema.json")}
    assert on_disk == set(SCHEMA_NAMES)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_package_copy_is_identical_to_schemas_folder(name: str) -> None:
    source = (SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8")
    copy = (SCHEMA_PACKAGE_COPY / f"{name}.schema.json").read_text(encoding="utf-8")
    assert copy == source, (
        f"packages/dispatcher-schema ships a stale copy of schemas/{name}.schema.json; "
        "run `hatch run sync-schemas`"
    )
    assert schema_text(name) == source  # what the installed package serves


def test_package_copy_has_no_extra_files() -> None:
    assert sorted(p.name for p in SCHEMA_PACKAGE_COPY.iterdir()) == sorted(
        [f"{name}.schema.json" for name in SCHEMA_NAMES]
        + ["dispatcher_submit.sql", "dispatcher_enqueue.sql"]
    )


def test_package_copy_of_the_sql_publisher_is_identical() -> None:
    from dispatcher.schema import sql_publisher

    source = (SCHEMAS / "dispatcher_submit.sql").read_text(encoding="utf-8")
    assert sql_publisher() == source, "stale copy: run `hatch run sync-schemas`"


def test_package_copy_of_the_sql_queue_publisher_is_identical() -> None:
    from dispatcher.schema import sql_queue_publisher

    source = (SCHEMAS / "dispatcher_enqueue.sql").read_text(encoding="utf-8")
    assert sql_queue_publisher() == source, "stale copy: run `hatch run sync-schemas`"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12_with_id_and_title(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == f"urn:dispatcher:schema:{name}:1"
    assert schema["title"]
    assert schema["description"]
    jsonschema.Draft202012Validator.check_schema(schema)


def _properties(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            yield f"{where}.{key}", value
        for key, value in node.items():
            yield from _properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _properties(value, f"{where}[{index}]")


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_property_has_a_description(name: str) -> None:
    undocumented = [
        where
        for where, prop in _properties(load_schema(name), name)
        if not str(prop.get("description", "")).strip()
    ]
    assert undocumented == []


def test_load_schema_returns_an_independent_copy() -> None:
    first = load_schema("task-message")
    first["required"].append("mutated")
    assert load_schema("task-message")["required"] == ["task"]


def test_unknown_schema_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown schema 'nope'; known schemas: task-message"):
        schema_text("nope")  # type: ignore[arg-type]


def test_files_are_pretty_printed_json() -> None:
    for path in SCHEMAS.glob("*.schema.json"):
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n"), path
        json.loads(text)


def test_channel_name_rule_is_the_same_everywhere() -> None:
    from dispatcher.schema import CHANNEL_NAME_PATTERN, CHANNEL_NAME_RULE
    from dispatcher.schema.patterns import ecma_pattern

    for name in ("control-message", "config"):
        definition = load_schema(name)["$defs"]["channel_name"]
        # The schemas' pattern is ECMA-262, where "$" is the very end of the text.
        assert ecma_pattern(definition["pattern"]).pattern == CHANNEL_NAME_PATTERN.pattern
        assert definition["description"] == CHANNEL_NAME_RULE + "."


def test_no_name_rule_takes_a_final_line_break() -> None:
    from dispatcher.schema import is_valid_channel_name
    from dispatcher.schema.signing import KEY_ID_PATTERN

    assert is_valid_channel_name("orders")
    assert not is_valid_channel_name("orders\n")
    assert KEY_ID_PATTERN.match("k1")
    assert not KEY_ID_PATTERN.match("k1\n")


def test_both_sql_files_define_their_shared_checks_alike() -> None:
    """Either file installs on its own, so both define the checks of args and kwargs."""

    def shared(name: str) -> str:
        text = (SCHEMAS / name).read_text(encoding="utf-8")
        start = text.index("-- dispatcher_unreadable_number()")
        last = text.index("FUNCTION dispatcher_unreadable_path(")
        return text[start : text.index("$function$;", text.index("END;", last))]

    assert "dispatcher_unreadable_path" in shared("dispatcher_submit.sql")
    assert shared("dispatcher_submit.sql") == shared("dispatcher_enqueue.sql")
