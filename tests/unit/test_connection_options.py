"""Every connection the project opens notices a dead peer: TCP keepalives and a bound on
unacknowledged data (``tcp_user_timeout``), unless the conninfo says otherwise."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.publish.connection_settings import (
    LIVENESS,
    TCP_USER_TIMEOUT,
    connect_options,
    connection_options,
)
from support.paths import PACKAGES

OPTION_HELPERS = frozenset({"connection_options", "connect_options"})
"""The functions whose keyword arguments every ``connect()`` call takes (unpacked)."""


def test_every_connection_gets_keepalives_and_a_user_timeout() -> None:
    options = connection_options("host=db dbname=app")
    assert options["client_encoding"] == "UTF8"
    assert options["keepalives"] == 1
    assert options["tcp_user_timeout"] == TCP_USER_TIMEOUT
    # A bound on a dead peer, not on a slow statement: seconds, not minutes nor milliseconds.
    assert 15_000 <= TCP_USER_TIMEOUT <= 30_000
    assert LIVENESS.items() <= connect_options("host=db").items()


def test_the_conninfos_own_settings_win() -> None:
    options = connection_options("postgresql://db/app?tcp_user_timeout=0&keepalives_idle=300")
    assert "tcp_user_timeout" not in options
    assert "keepalives_idle" not in options
    assert options["keepalives_interval"] == LIVENESS["keepalives_interval"]
    assert "keepalives" not in connection_options("host=db keepalives=0")


def test_a_conninfo_that_cannot_be_read_is_left_to_connect_to_refuse() -> None:
    assert connection_options("host='unterminated")["keepalives"] == 1


def _connect_calls() -> Iterator[tuple[Path, ast.Call, str]]:
    """Each ``psycopg.connect()`` / ``[Async]Connection.connect()`` call in the packages,
    with the source of the function around it."""
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "connect"
                    and ast.unparse(node.func.value).split(".")[-1]
                    in {"psycopg", "Connection", "AsyncConnection"}
                ):
                    yield path, node, ast.get_source_segment(source, function) or ""


def _takes_the_options(call: ast.Call, function: str) -> bool:
    for keyword in call.keywords:
        if keyword.arg is not None:
            continue
        value = keyword.value
        if isinstance(value, ast.Call) and ast.unparse(value.func) in OPTION_HELPERS:
            return True
        if isinstance(value, ast.Name) and any(f"{name}(" in function for name in OPTION_HELPERS):
            return True  # options = connect_options(conninfo) | {...}
    return False


def test_every_connect_call_of_the_packages_takes_the_shared_options() -> None:
    calls = list(_connect_calls())
    assert len(calls) >= 10  # the scan finds them
    missing = [
        f"{path.relative_to(PACKAGES)}:{call.lineno}"
        for path, call, function in calls
        if not _takes_the_options(call, function)
    ]
    assert missing == []


@pytest.mark.parametrize("given", ["host=db", "host=/run/postgresql"])
def test_options_are_libpq_parameters(given: str) -> None:
    from psycopg.conninfo import make_conninfo

    make_conninfo(given, **connection_options(given))  # raises on an unknown parameter
