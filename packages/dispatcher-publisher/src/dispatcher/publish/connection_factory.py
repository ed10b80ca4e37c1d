"""The application's own connection to publish on: ``brokers.pg_notify.connection_factory``.

A web application whose data and tasks live in one database may name a function that
returns its current connection (a Django project's, say). Tasks are then sent on it, in its
current transaction, as if each call passed ``connection=``: delivered when the transaction
commits, never when it rolls back. dispatcherd calls these ``sync_connection_factory`` and
``async_connection_factory``, and calls them the same way: for each submission (dispatcherd
builds a publisher for each), with its connection config as keyword arguments: here
``conninfo=``, the conninfo of ``brokers.pg_notify``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import psycopg

from dispatcher.publish.broker_errors import first_line
from dispatcher.publish.caller_connections import not_a_connection_hint, type_name
from dispatcher.publish.errors import BrokerUnavailable, PublishError


class ConnectionFactory:
    """The function named by the config key *key*, called for a connection to publish on.

    It is imported at the first call, not when the config loads: an application may name a
    function of a module that can only be imported once the application is set up.
    """

    def __init__(self, key: str, name: str, conninfo: str, expected: type[Any]) -> None:
        self.key = key
        """The config key naming the function, such as ``brokers.pg_notify.connection_factory``."""
        self.name = name
        """The function, as ``module.name``."""
        self.whose = f"the connection from {key} ({name})"
        """How errors name the connections it returns."""
        self._expected = expected
        self._parameters = {"conninfo": conninfo}
        self._function: Callable[..., Any] | None = None

    def connection(self) -> Any:
        """Call the function; return its connection.

        :raises PublishError: when the function cannot be imported, raises, or returns
            something other than the expected kind of psycopg connection.
        :raises BrokerUnavailable: when it raises a psycopg error (no connection to be had).
        """
        try:
            connection = self._resolve()(**self._parameters)
        except PublishError:
            raise
        except psycopg.Error as exc:
            raise BrokerUnavailable(self._failed(exc)) from exc
        except Exception as exc:
            raise PublishError(self._failed(exc)) from exc
        if inspect.iscoroutine(connection):
            connection.close()  # never awaited: said here, not warned about later
            raise PublishError(
                f"cannot submit tasks: {self.key} ({self.name}) is a coroutine function: "
                "asyncio publishers take it as async_connection_factory"
            )
        return self._checked(connection)

    async def aconnection(self) -> Any:
        """:meth:`connection` for a function that may be a coroutine function."""
        try:
            connection = self._resolve()(**self._parameters)
            if inspect.isawaitable(connection):
                connection = await connection
        except PublishError:
            raise
        except psycopg.Error as exc:
            raise BrokerUnavailable(self._failed(exc)) from exc
        except Exception as exc:
            raise PublishError(self._failed(exc)) from exc
        return self._checked(connection)

    def _resolve(self) -> Callable[..., Any]:
        if self._function is not None:
            return self._function
        module_name, _, attribute = self.name.rpartition(".")
        if not module_name:
            raise PublishError(self._refused("is not of the form module.name"))
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PublishError(self._refused(f"cannot be imported: {first_line(exc)}")) from exc
        function: Callable[..., Any] | None = getattr(module, attribute, None)
        if function is None:
            raise PublishError(self._refused(f"module {module_name} has no {attribute!r}"))
        if not callable(function):
            raise PublishError(self._refused(f"is a {type(function).__name__}, not a function"))
        self._function = function
        return function

    def _checked(self, connection: Any) -> Any:
        if not isinstance(connection, self._expected):
            hint = "" if isinstance(connection, str | bytes) else not_a_connection_hint(connection)
            raise PublishError(
                f"cannot submit tasks: {self.key} ({self.name}) returned "
                f"{type_name(connection)}, not a psycopg {self._expected.__name__}{hint}"
            )
        return connection

    def _refused(self, reason: str) -> str:
        return f"cannot submit tasks: {self.key} {self.name!r} {reason}"

    def _failed(self, exc: BaseException) -> str:
        return (
            f"cannot submit tasks: {self.key} ({self.name}) raised "
            f"{type(exc).__name__}: {first_line(exc)}"
        )
