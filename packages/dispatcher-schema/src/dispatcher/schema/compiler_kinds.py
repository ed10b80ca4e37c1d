"""The compiler's checks of the keywords of each kind of value: numbers, strings, arrays, objects.

:class:`KindChecks`, a base class of the compiler (:mod:`dispatcher.schema.compiler`), writes
the lines that check a value's bounds, length, pattern, items or keys, for a value known to
be of that kind; the compiler writes the subschemas they hold and names the values they use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.schema.compiler_keywords import UnsupportedSchema
from dispatcher.schema.patterns import ecma_pattern


def indent(lines: list[str]) -> list[str]:
    """*lines* of Python one level deeper."""
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


class KindChecks:
    """Writes the checks of the keywords of numbers, strings, arrays and objects.

    The compiler, a subclass, writes the subschemas (:meth:`checks`, :meth:`function`) and
    binds the values the generated code uses (:meth:`constant`, :meth:`table`).
    """

    def checks(self, node: Any, var: str, depth: int) -> list[str]:
        """Lines that ``return False`` unless the value in *var* matches *node*."""
        raise NotImplementedError

    def function(self, node: Any, pointer: str | None = None) -> str:
        """The name of a function that checks *node*, writing it if needed."""
        raise NotImplementedError

    def constant(self, value: Any) -> str:
        """A name in the generated code's namespace bound to *value* (never pasted as text)."""
        raise NotImplementedError

    def table(self, expression: str) -> str:
        """A name bound, once every function exists, to *expression* (which names some)."""
        raise NotImplementedError

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
                lines.extend(indent([f"{item} = {var}[{index}]", *checks]))
        if "items" in node:
            checks = self.checks(node["items"], item, depth + 1)
            if checks:
                start = f"{var}[{len(prefix)}:]" if prefix else var
                lines.extend([f"for {item} in {start}:", *indent(checks)])
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
                        lines.extend([f"if {name} in {var}:", *indent([fetch, *checks])])
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
            loop.extend(indent(self.checks(additional, value, depth + 1) or ["pass"]))
        lines.extend([f"for {key}, {value} in {var}.items():", *indent(loop)])
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
