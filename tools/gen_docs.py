"""Generate the reference pages in docs/reference/ from the JSON Schemas.

The schemas are the single source of truth; a test fails when a generated page is stale.
Run ``hatch run generate-docs`` after changing a schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "schemas"
REFERENCE = REPO / "docs" / "reference"

PAGES = {
    "config.md": ("Config reference", ["config"]),
    "messages.md": (
        "Message formats",
        ["task-message", "control-message", "control-reply", "chunk-envelope", "signed-envelope"],
    ),
}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Merge a node with the definition it refers to (``$ref`` within the same file)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(schema, target), **{k: v for k, v in node.items() if k != "$ref"}}


def _type(schema: dict[str, Any], node: dict[str, Any]) -> str:
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kinds = node.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    text = " or ".join(kinds)
    items = _resolve(schema, node["items"]) if isinstance(node.get("items"), dict) else {}
    if "title" in items:
        text += f" of {items['title']}s"
    return text


def _limits(node: dict[str, Any]) -> str:
    parts = []
    bounds = (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("minLength", "length >="),
        ("maxLength", "length <="),
    )
    for key, label in bounds:
        if key in node:
            parts.append(f"{label} {node[key]}")
    return ", ".join(parts)


def _rows(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> Iterator[str]:
    node = _resolve(schema, node)
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        child = _resolve(schema, child)
        path = f"{prefix}{name}"
        default = f"`{json.dumps(child['default'])}`" if "default" in child else ""
        needed = "yes" if name in required else ""
        description = " ".join(str(child.get("description", "")).split())
        limits = _limits(child)
        if limits:
            description += f" ({limits})"
        yield f"| `{path}` | {_type(schema, child)} | {needed} | {default} | {description} |"
        yield from _rows(schema, child, f"{path}.")
        entries = child.get("additionalProperties")
        if isinstance(entries, dict) and (entries.get("properties") or entries.get("$ref")):
            yield from _rows(schema, entries, f"{path}.<task name>.")


def page(title: str, names: list[str]) -> str:
    """The Markdown of one reference page."""
    lines = [
        f"# {title}",
        "",
        "<!-- Generated from schemas/*.schema.json by tools/gen_docs.py: do not edit. -->",
        "",
    ]
    for name in names:
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
        closed = schema.get("additionalProperties", True) is False
        others = "No other keys are allowed." if closed else "Keys not listed are passed along."
        link = f"[`schemas/{name}.schema.json`](../../schemas/{name}.schema.json)"
        lines += [
            f"## {schema['title']} (`{name}`)",
            "",
            " ".join(schema["description"].split()),
            "",
            f"Schema: {link}, `$id` `{schema['$id']}`. {others}",
            "",
            "| key | type | required | default | description |",
            "|---|---|---|---|---|",
            *_rows(schema, schema, ""),
            "",
        ]
    return "\n".join(lines)


def expected_pages() -> dict[Path, str]:
    """Map each generated page to the text it should have."""
    return {REFERENCE / file: page(title, names) for file, (title, names) in PAGES.items()}


def main() -> None:
    """Write every page."""
    REFERENCE.mkdir(parents=True, exist_ok=True)
    for path, text in expected_pages().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
