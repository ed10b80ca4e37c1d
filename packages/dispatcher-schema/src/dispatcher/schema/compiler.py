"""Compile a JSON Schema (draft 2020-12) into one plain Python function that says valid or not.

The schemas of this project use a small part of JSON Schema: types, bounds, lengths, patterns,
``enum``/``const``, properties and items, local ``$ref``. :func:`compile_schema` turns such a
schema into the source of a few Python functions, one per subschema, executed once; checking a
typical task message is then a handful of comparisons (about a microsecond), with nothing
outside the standard library loaded. A schema that uses a keyword this module does not
implement is refused with :class:`UnsupportedSchema`, and the caller falls back to the
reference implementation (``jsonschema``), which also explains every failure.

Semantics follow the specification as ``jsonschema`` implements it, with deliberate
exceptions that both sides of this package apply (see ``_explainer_class`` in
:mod:`dispatcher.schema.validation`): a ``pattern`` or a ``patternProperties`` key is an
ECMA-262 regular expression (:mod:`dispatcher.schema.patterns`), so ``$`` matches only at the
very end of the text, never before a final newline as Python's ``$`` does, and matches string
keys only; ``uniqueItems`` finds any two equal items, even apart once sorted (see
:func:`~dispatcher.schema.json_equality.all_unique`). Values JSON cannot represent are
refused where a number is expected: ``NaN`` and the infinities are not numbers here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import unquote

from dispatcher.schema.compiler_keywords import (
    ANNOTATIONS,
    GUARDS,
    KEYWORDS,
    TYPE_TESTS,
    UnsupportedSchema,
    is_leaf,
)
from dispatcher.schema.json_equality import all_unique, json_equal, repeated
from dispatcher.schema.patterns import ecma_pattern

__all__ = [  # all but compile_schema named here, defined in compiler_keywords and json_equality
    "ANNOTATIONS",
    "UnsupportedSchema",
    "all_unique",
    "compile_schema",
    "json_equal",
    "repeated",
]


def _indent(lines: list[str]) -> list[str]:
    return [f"    {line}" for line in lines]


class _Matching:
    """A pattern's test, remembering the texts that matched (task names repeat)."""

    __slots__ = ("search", "seen")

    LIMIT: Final = 4096
    """At most this many texts are remembered; then the memory starts again."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.search = pattern.search
        self.seen: dict[str, None] = {}

    def check(self, text: str) -> bool:
        """Tell whether the pattern matches *text* (not yet remembered as matching)."""
        if self.search(text) is None:
            return False
        if len(self.seen) >= self.LIMIT:
            self.seen.clear()
        if type(text) is str:  # a subclass could compare equal and still differ
            self.seen[text] = None
        return True


class _Compiler:
    """Writes Python that checks a value against a schema.

    Subschemas are written inline, each checking its own variable (``x`` at the top, ``v1``,
    ``v2``... one per level); a ``$ref`` is inlined too unless it refers back to a schema
    being written (a recursive schema), which becomes a function of its own. Failing any
    check returns ``False`` from the whole function.
    """

    def __init__(self, root: Any) -> None:
        self.root = root
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "_equal": json_equal,
            "_unique": all_unique,
        }
        self.by_pointer: dict[str, str] = {}
        self.tables: list[str] = []
        """Statements run after every function is defined: tables of functions."""
        self.active: list[str] = []
        """The ``$ref`` pointers being written inline, innermost last."""
        self.count = 0
        """Functions written so far."""

    def constant(self, value: Any) -> str:
        """A name in the generated code's namespace bound to *value* (never pasted as text)."""
        name = f"_c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def table(self, expression: str) -> str:
        """A name bound, once every function exists, to *expression* (which names some)."""
        name = f"_t{len(self.tables)}"
        self.tables.append(f"{name} = {expression}")
        return name

    def function(self, node: Any, pointer: str | None = None) -> str:
        """The name of a function that checks *node*, writing it if needed."""
        if pointer is not None and pointer in self.by_pointer:
            return self.by_pointer[pointer]
        self.count += 1
        name = f"_f{self.count}"
        if pointer is not None:
            self.by_pointer[pointer] = name  # before the body: a schema may refer to itself
        outer = self.active
        self.active = [*outer, pointer] if pointer is not None else list(outer)
        try:
            body = self.checks(node, "x", 0)
        finally:
            self.active = outer
        self.lines.extend([f"def {name}(x):", *_indent(body), "    return True"])
        return name

    def target(self, reference: Any) -> Any:
        """The subschema a local ``$ref`` (a URI fragment holding a JSON pointer) names."""
        if not isinstance(reference, str) or not reference.startswith("#"):
            raise UnsupportedSchema(f"only local $ref are supported, not {reference!r}")
        node = self.root
        pointer = unquote(reference[1:])  # a URI fragment: percent-decoded, then split
        if pointer and not pointer.startswith("/"):
            raise UnsupportedSchema(f"$ref {reference!r} is not a JSON pointer")
        for part in pointer[1:].split("/") if pointer else []:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise UnsupportedSchema(f"$ref {reference!r} points nowhere") from None
            self.refuse_embedded_resource(node)
        return node

    def refuse_embedded_resource(self, node: Any) -> None:
        """Refuse a subschema with its own ``$id``: its ``$ref`` would resolve against it."""
        if node is not self.root and isinstance(node, Mapping) and "$id" in node:
            raise UnsupportedSchema("a subschema with its own $id is not supported")

    def checks(self, node: Any, var: str, depth: int) -> list[str]:
        """Lines that ``return False`` unless the value in *var* matches *node*."""
        if node is True:
            return []
        if node is False:
            return ["return False"]
        if not isinstance(node, Mapping):
            raise UnsupportedSchema(f"a schema must be an object or a boolean, not {node!r}")
        unknown = set(node) - KEYWORDS - ANNOTATIONS
        if unknown:
            raise UnsupportedSchema(f"keyword {min(map(repr, unknown))} is not supported")
        self.refuse_embedded_resource(node)
        lines: list[str] = []
        only = None
        if "type" in node:
            types = node["type"]
            names = [types] if isinstance(types, str) else types
            if not isinstance(names, list) or not all(
                isinstance(t, str) and t in TYPE_TESTS for t in names
            ):
                raise UnsupportedSchema(f"type {types!r} is not supported")
            test = " or ".join(TYPE_TESTS[t].format(v=var) for t in names)
            lines.append(f"if not ({test}): return False")
            only = names[0] if len(names) == 1 else None
        if "$ref" in node:
            lines.extend(self.reference(node["$ref"], var, depth))
        if "const" in node:
            lines.append(f"if not _equal({var}, {self.constant(node['const'])}): return False")
        if "enum" in node:
            lines.extend(self.enum(node["enum"], var))
        for sub in self.schemas(node, "allOf"):
            lines.extend(self.checks(sub, var, depth))
        if "anyOf" in node:
            checks = self.table(self.names(self.schemas(node, "anyOf")))
            lines.append(f"if not any(f({var}) for f in {checks}): return False")
        if "oneOf" in node:
            checks = self.table(self.names(self.schemas(node, "oneOf")))
            lines.append(f"if sum(1 for f in {checks} if f({var})) != 1: return False")
        if "not" in node:
            lines.append(f"if {self.function(node['not'])}({var}): return False")
        for kind, lines_of in (
            ("number", self.numeric),
            ("string", self.string),
            ("array", self.array),
            ("object", self.object),
        ):
            kept = lines_of(node, var, depth)
            if kept and not (only == kind or (kind == "number" and only == "integer")):
                kept = [f"if {GUARDS[kind].format(v=var)}:", *_indent(kept)]
            lines.extend(kept)
        return lines

    def reference(self, reference: Any, var: str, depth: int) -> list[str]:
        """Checks of *var* against the target of ``$ref`` *reference*."""
        target = self.target(reference)
        if reference in self.active or not is_leaf(target):
            name = self.function(target, reference)
            return [f"if not {name}({var}): return False"]
        self.active.append(reference)
        try:
            return self.checks(target, var, depth)
        finally:
            self.active.pop()

    @staticmethod
    def schemas(node: Mapping[str, Any], keyword: str) -> list[Any]:
        """The subschemas of *keyword* (``allOf``...) in *node*; none when it is absent."""
        subs = node.get(keyword, [])
        if not isinstance(subs, list) or (keyword in node and not subs):
            raise UnsupportedSchema(f"{keyword} must be a non-empty array")
        return subs

    def names(self, nodes: list[Any]) -> str:
        """A tuple expression of the functions checking *nodes*."""
        return "(" + "".join(f"{self.function(n)}, " for n in nodes) + ")"

    def enum(self, values: Any, var: str) -> list[str]:
        """Checks of ``enum``: a set lookup when every value is a string."""
        if not isinstance(values, list):
            raise UnsupportedSchema("enum must be an array")
        if all(isinstance(v, str) for v in values):
            allowed = self.constant(frozenset(values))
            return [f"if not (isinstance({var}, str) and {var} in {allowed}): return False"]
        listed = self.constant(tuple(values))
        return [f"if not any(_equal({var}, v) for v in {listed}): return False"]

    def numeric(self, node: Mapping[str, Any], var: str, depth: int) -> list[str]:
        """Checks of the bounds of a number, for a value known to be one."""
        lines = []
        for keyword, fails in (
            ("minimum", "<"),
            ("maximum", ">"),
            ("exclusiveMinimum", "<="),
            ("exclusiveMaximum", ">="),
        ):
            if keyword in node:
                bound = node[keyword]
                if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                    raise UnsupportedSchema(f"{keyword} must be a number")
                lines.append(f"if {var} {fails} {self.constant(bound)}: return False")
        return lines

    def string(self, node: Mapping[str, Any], var: str, depth: int) -> list[str]:
        """Checks of a string's length and pattern, for a value known to be one."""
        lines = self.sizes(node, var, "minLength", "maxLength")
        if "pattern" in node:
            matching = _Matching(self.pattern(node["pattern"]))
            seen, check = self.constant(matching.seen), self.constant(matching.check)
            lines.append(f"if {var} not in {seen} and not {check}({var}): return False")
        return lines

    def array(self, node: Mapping[str, Any], var: str, depth: int) -> list[str]:
        """Checks of an array's items and size, for a value known to be one."""
        lines = self.sizes(node, var, "minItems", "maxItems")
        prefix = node.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise UnsupportedSchema("prefixItems must be an array")
        item = f"v{depth + 1}"
        for index, sub in enumerate(prefix):
            checks = self.checks(sub, item, depth + 1)
            if checks:
                lines.append(f"if len({var}) > {index}:")
                lines.extend(_indent([f"{item} = {var}[{index}]", *checks]))
        if "items" in node:
            checks = self.checks(node["items"], item, depth + 1)
            if checks:
                start = f"{var}[{len(prefix)}:]" if prefix else var
                lines.extend([f"for {item} in {start}:", *_indent(checks)])
        unique = node.get("uniqueItems", False)
        if not isinstance(unique, bool):
            raise UnsupportedSchema("uniqueItems must be a boolean")
        if unique:
            lines.append(f"if not _unique({var}): return False")
        return lines

    def object(self, node: Mapping[str, Any], var: str, depth: int) -> list[str]:
        """Checks of an object's keys and values, for a value known to be one."""
        lines = []
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            raise UnsupportedSchema("required must be an array of strings")
        lines.extend(self.sizes(node, var, "minProperties", "maxProperties"))
        properties = node.get("properties", {})
        patterns = node.get("patternProperties", {})
        if not isinstance(properties, Mapping) or not isinstance(patterns, Mapping):
            raise UnsupportedSchema("properties and patternProperties must be objects")
        additional = node.get("additionalProperties", True)
        names = node.get("propertyNames", True)
        value = f"v{depth + 1}"
        for key in required:
            if key not in properties or additional is not True or patterns or names is not True:
                lines.append(f"if {self.constant(key)} not in {var}: return False")
        if additional is True and not patterns and names is True:
            # Only the listed keys can fail: look each one up.
            for key, sub in properties.items():
                checks = self.checks(sub, value, depth + 1)
                name = self.constant(key)
                if key in required:
                    lines.append(f"if {name} not in {var}: return False")
                if checks:
                    fetch = f"{value} = {var}[{name}]"
                    if key in required:
                        lines.extend([fetch, *checks])
                    else:
                        lines.extend([f"if {name} in {var}:", *_indent([fetch, *checks])])
            return lines
        key = f"k{depth + 1}"
        loop: list[str] = []
        if names is not True:
            loop.extend(self.checks(names, key, depth + 1))
        entries = [f"{self.constant(k)}: {self.function(v)}" for k, v in properties.items()]
        by_name = self.table("{" + ", ".join(entries) + "}")
        loop.append(f"f = {by_name}.get({key})")
        loop.append(f"if f is not None and not f({value}): return False")
        rest = "f is None"
        if patterns:
            by_pattern = self.table(
                "("
                + "".join(
                    f"({self.constant(self.pattern(p).search)}, {self.function(v)}), "
                    for p, v in patterns.items()
                )
                + ")"
            )
            loop.append("matched = False")
            loop.append(f"for search, g in {by_pattern}:")
            loop.append(f"    if isinstance({key}, str) and search({key}) is not None:")
            loop.append("        matched = True")
            loop.append(f"        if not g({value}): return False")
            rest = "f is None and not matched"
        if additional is False:
            loop.append(f"if {rest}: return False")
        elif additional is not True:
            loop.append(f"if {rest}:")
            loop.extend(_indent(self.checks(additional, value, depth + 1) or ["pass"]))
        lines.extend([f"for {key}, {value} in {var}.items():", *_indent(loop)])
        return lines

    def sizes(self, node: Mapping[str, Any], var: str, least: str, most: str) -> list[str]:
        """Checks of ``len(var)`` for the keywords *least* and *most* (e.g. ``minItems``)."""
        lines = []
        if least in node:
            lines.append(f"if len({var}) < {self.count_of(node, least)}: return False")
        if most in node:
            lines.append(f"if len({var}) > {self.count_of(node, most)}: return False")
        return lines

    @staticmethod
    def count_of(node: Mapping[str, Any], keyword: str) -> int:
        """The non-negative integer *keyword* (e.g. ``minLength``) holds in *node*."""
        value = node[keyword]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UnsupportedSchema(f"{keyword} must be a non-negative integer")
        return int(value)  # a plain int: its text goes into the generated source

    @staticmethod
    def pattern(text: Any) -> re.Pattern[str]:
        """The compiled ``pattern`` or ``patternProperties`` key *text*."""
        if not isinstance(text, str):
            raise UnsupportedSchema("pattern must be a string")
        try:
            return ecma_pattern(text)
        except re.error as exc:
            raise UnsupportedSchema(f"pattern {text!r} is not supported: {exc}") from None


def compile_schema(schema: Any) -> Callable[[Any], bool]:
    """Return a function telling whether a Python value (as ``json`` decodes) matches *schema*.

    :raises UnsupportedSchema: when *schema* uses a keyword (or a form of one) not implemented
        here; the caller should then use ``jsonschema``.
    """
    compiler = _Compiler(schema)
    try:
        entry = compiler.function(schema, "#")
        source = "\n".join([*compiler.lines, *compiler.tables])
        code = compile(source, "<dispatcher.schema compiled>", "exec")
    except (RecursionError, SyntaxError, MemoryError) as exc:  # nested past Python's limits
        raise UnsupportedSchema(f"the schema nests too deeply to compile ({exc})") from None
    namespace = compiler.namespace
    exec(code, namespace)
    check: Callable[[Any], bool] = namespace[entry]
    return check
