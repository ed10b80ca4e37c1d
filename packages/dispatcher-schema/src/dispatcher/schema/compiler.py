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

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from dispatcher.schema.compiler_keywords import (
    ANNOTATIONS,
    GUARDS,
    KEYWORDS,
    TYPE_TESTS,
    UnsupportedSchema,
    is_leaf,
)
from dispatcher.schema.compiler_kinds import KindChecks, indent
from dispatcher.schema.json_equality import all_unique, json_equal, repeated

__all__ = [  # all but compile_schema named here, defined in compiler_keywords and json_equality
    "ANNOTATIONS",
    "UnsupportedSchema",
    "all_unique",
    "compile_schema",
    "json_equal",
    "repeated",
]


class _Compiler(KindChecks):
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
        self.lines.extend([f"def {name}(x):", *indent(body), "    return True"])
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
                kept = [f"if {GUARDS[kind].format(v=var)}:", *indent(kept)]
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
