"""Every built-in function the packages' SQL calls is named with its schema, ``pg_catalog.``.

An unqualified call resolves through the session's ``search_path``, and a function with
concrete argument types in any schema of it (``public`` where PUBLIC may create in it, a
schema named like the role: ``"$user"``) beats a polymorphic or variadic built-in
(``unnest(anyarray)``, ``format(text, VARIADIC "any")``) even with ``pg_catalog`` searched
first: another role's code would run as the role of whoever sends the statement. Qualified,
the call never leaves ``pg_catalog``.

The check reads the source, not the statements as sent: every string constant of the
packages' modules (docstrings aside) and every SQL file they ship, so that a statement added
anywhere is checked. Only the names of built-in functions are looked for (from this server's
``pg_proc``), so that a message's ``run()`` is not taken for a call. The keyword forms
(``extract(epoch FROM x)``, ``substring(x FROM 2)``...) are the grammar's own: the parser
calls ``pg_catalog``'s function whatever the ``search_path``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

PACKAGES = Path(__file__).resolve().parents[2] / "packages"

KEYWORD_FORMS = frozenset({"extract", "overlay", "position", "substring", "trim", "normalize"})
"""Functions with a syntax of their own, which the parser maps to ``pg_catalog``'s."""

CALL = re.compile(r"(?<![\w.:\"$])([A-Za-z_][A-Za-z0-9_]*)\s*\(")
"""A name followed by ``(``, not after a schema (``x.``), a cast (``::``) or a quote."""

SQL_COMMENT = re.compile(r"--[^\n]*")
SQL_LITERAL = re.compile(r"'(?:[^']|'')*'")
"""A comment, a string literal of an SQL file: the words of its messages are no calls."""

SQL_TEXT = re.compile(
    r"\b(?:SELECT|FROM|WHERE|WITH|INSERT|UPDATE|DELETE|CASE|WHEN|SET|CREATE|ALTER|DO|VALUES"
    r"|RETURNING|AND|OR|NOT|NULL|IS|AS)\b|^\s*\w+\([^()]*\)\s*$"
)
"""What tells SQL (a statement, a fragment of one, a lone ``now()``) from a message: an
upper-case keyword, or nothing but a call."""


def python_texts(path: Path) -> Iterator[tuple[int, str]]:
    """Each string constant of the module *path* but its docstrings, with its line.

    An f-string is one text, its replacement fields written ``{}``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skipped.add(id(node.value))  # a docstring (of a module, class, function or name)
        elif isinstance(node, ast.JoinedStr):
            skipped.update(id(part) for part in node.values)
            text = "".join(p.value if isinstance(p, ast.Constant) else "{}" for p in node.values)
            yield node.lineno, text
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in skipped:
            if isinstance(node.value, bytes):
                yield node.lineno, node.value.decode("utf-8", "replace")
            elif isinstance(node.value, str):
                yield node.lineno, node.value


def sources() -> Iterator[tuple[str, str]]:
    """``(where, text)`` of every text the packages may send as SQL."""
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        for line, text in python_texts(path):
            if SQL_TEXT.search(text):
                yield f"{path.relative_to(PACKAGES)}:{line}", text
    for path in sorted(PACKAGES.glob("*/src/**/*.sql")):
        text = SQL_COMMENT.sub("", path.read_text("utf-8"))
        yield str(path.relative_to(PACKAGES)), SQL_LITERAL.sub("''", text)


@pytest.fixture(scope="module")
def builtin_names(pg_dsn: str) -> frozenset[str]:
    """The names of the functions (aggregates and window functions too) in ``pg_catalog``."""
    with psycopg.connect(pg_dsn) as conn:
        rows: list[Any] = conn.execute(
            "SELECT DISTINCT p.proname FROM pg_catalog.pg_proc AS p"
            " WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace"
        ).fetchall()
    return frozenset(str(row[0]) for row in rows)


def unqualified_calls(text: str, builtins: frozenset[str]) -> list[str]:
    """The built-in functions *text* calls without ``pg_catalog.``."""
    names = (match.group(1) for match in CALL.finditer(text))
    return sorted({n for n in names if n.lower() in builtins and n.lower() not in KEYWORD_FORMS})


def test_the_check_finds_an_unqualified_call(builtin_names: frozenset[str]) -> None:
    text = "SELECT count(*), pg_catalog.sum(x), extract(epoch FROM now()) FROM unnest(%s) AS q(x)"
    assert unqualified_calls(text, builtin_names) == ["count", "now", "unnest"]


def test_every_builtin_function_the_packages_call_is_schema_qualified(
    builtin_names: frozenset[str],
) -> None:
    found = [
        f"{where}: {', '.join(calls)} in {text.strip()[:80]!r}"
        for where, text in sources()
        if (calls := unqualified_calls(text, builtin_names))
    ]
    assert not found, "call these as pg_catalog.<name>(...):\n" + "\n".join(found)
