"""Connection factories as an application would write them, for ``connection_factory``.

A test puts the connection its "application" works in into :data:`current` (or
:data:`current_async`); the factories hand it out, as a Django project's factory hands out
the connection of the request being served, and record the keyword arguments they got.
"""

from __future__ import annotations

import json as _json
from typing import Any

current: Any = None
"""What :func:`connection` returns."""

current_async: Any = None
"""What :func:`aconnection` returns."""

calls: list[dict[str, Any]] = []
"""The keyword arguments of every call, in order."""


def connection(**parameters: Any) -> Any:
    """The application's current connection."""
    calls.append(parameters)
    return current


async def aconnection(**parameters: Any) -> Any:
    """The application's current async connection, from a coroutine function."""
    calls.append(parameters)
    return current_async


def broken(**parameters: Any) -> Any:
    """A factory that fails as an application's might."""
    raise RuntimeError("the application is not set up yet\nsecond line")


not_a_function = 42


def json(**parameters: Any) -> Any:
    """A factory that returns something other than a connection."""
    return _json
