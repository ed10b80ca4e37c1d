"""Statements given up on the client side are cancelled on the server first.

A connection closed while its statement runs does not end that statement: a server session
waiting for a lock (a NOTIFY behind a committing one that waits for a synchronous standby)
or for a standby (a commit) does not read its socket, and stays. A service that closes such
a connection and opens another at every timeout fills the server with sessions until nobody
can connect.

psycopg cancels a statement on the server when its task is cancelled, unless it is cancelled
again meanwhile, which anyio's cancel scopes do (their cancellation is delivered at every
wait until the scope is left): it then closes the connection without the cancel sent. Here
the statement runs in a task of its own, which no cancel scope reaches: on a timeout, or
when the caller is cancelled, the server is asked to cancel it, and given
:data:`CANCEL_WAIT` seconds to end it; only then, if it still runs, is the connection closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

import anyio
import psycopg

from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line

logger = get_logger("dispatcher.database")

CANCEL_WAIT: Final = 5.0
"""Seconds the server has to end a statement once asked to cancel it (the cancel request's
own connection included) before its connection is closed, the statement perhaps still
running there."""

Params = Sequence[Any] | dict[str, Any] | None


class StatementStuck(TimeoutError):
    """A statement went on after the server was asked to cancel it: its connection is closed.

    Its server session may be left (waiting for what held the statement up).
    """


async def execute_within(
    conn: psycopg.AsyncConnection[Any],
    query: Any,
    params: Params = None,
    timeout: float | None = None,
    *,
    cancel_wait: float = CANCEL_WAIT,
) -> list[tuple[Any, ...]]:
    """Run *query* on *conn*; return its rows (none for a statement that returns none).

    Past *timeout* seconds (``None``: none), or when the caller is cancelled, the server is
    asked to cancel the statement (see the module). A statement that completes when asked
    to cancel (a commit that waited for a synchronous standby: committed locally) returns
    its rows, late.

    :raises psycopg.errors.QueryCanceled: when the server cancelled it on a timeout (the
        connection answered: it may be used again).
    :raises StatementStuck: when it went on for *cancel_wait* seconds after the cancel (the
        connection is closed).
    :raises psycopg.Error: as psycopg does.
    """
    task = asyncio.ensure_future(_run(conn, query, params))
    task.add_done_callback(_consume)
    try:
        await asyncio.wait({task}, timeout=timeout)
    except BaseException:
        with anyio.CancelScope(shield=True):
            if not await _cancel(conn, task, cancel_wait):
                await _abandon(conn, task)
        raise
    if not task.done():
        with anyio.CancelScope(shield=True):
            ended = await _cancel(conn, task, cancel_wait)
            if not ended:
                await _abandon(conn, task)
                raise StatementStuck(
                    f"the statement went on for {cancel_wait:g} s after the server was asked "
                    "to cancel it"
                )
    return task.result()


async def _run(
    conn: psycopg.AsyncConnection[Any], query: Any, params: Params
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(query, params)
    return await cursor.fetchall() if cursor.description is not None else []


async def _cancel(
    conn: psycopg.AsyncConnection[Any], task: asyncio.Future[Any], wait: float
) -> bool:
    """Ask the server to cancel the statement of *task*; return whether it ended in *wait* s."""
    if task.done():
        return True
    deadline = time.monotonic() + wait
    try:
        await conn.cancel_safe(timeout=wait)
    except (psycopg.Error, OSError) as exc:
        logger.debug("cancelling a statement failed: %s", first_line(exc))
    await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    return task.done()


async def _abandon(conn: psycopg.AsyncConnection[Any], task: asyncio.Future[Any]) -> None:
    """Close *conn*, whose statement (*task*) runs on; *task* ends with an error then."""
    task.cancel()  # (psycopg finds the connection closed, and tries no cancel of its own)
    await conn.close()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # (retrieved: asyncio would log it as never retrieved)
