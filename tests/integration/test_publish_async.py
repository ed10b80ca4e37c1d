"""The async API over real PostgreSQL: the same guarantees as the sync one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from dispatcher.config import Settings
from dispatcher.publish import (
    ChunkAssembler,
    abatch,
    aclose_connections,
    asubmit_task,
)
from dispatcher.publish.chunking import is_chunk
from support import tasks
from support.postgres import wait_for_notifies

Conn = psycopg.Connection[Any]


def received(listener: Conn, count: int, timeout: float = 5) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in wait_for_notifies(listener, count, timeout)]


def nothing_more(listener: Conn) -> bool:
    return received(listener, 1, timeout=0.3) == []


def run(coroutine: Any) -> Any:
    async def with_cleanup() -> Any:
        try:
            return await coroutine
        finally:
            await aclose_connections()

    return asyncio.run(with_cleanup())


def test_adelay_and_aapply_async(configured: Settings, listener: Conn, channel: str) -> None:
    async def scenario() -> tuple[Any, Any]:
        first = await tasks.add.adelay(2, 3)
        second = await tasks.send_email.aapply_async(
            args=["a@example.com"], queue=channel, timeout=1, on_duplicate="discard", uuid="u-2"
        )
        return first, second

    first, second = run(scenario())
    assert received(listener, 2) == [
        {
            "task": "support.tasks.add",
            "uuid": first.uuid,
            "args": [2, 3],
            "kwargs": {},
            "time_pub": first.message["time_pub"],
        },
        {
            "task": "support.tasks.send_email",
            "uuid": "u-2",
            "args": ["a@example.com"],
            "kwargs": {},
            "time_pub": second.message["time_pub"],
            "timeout": 1,
            "on_duplicate": "discard",
        },
    ]


def test_asubmit_task_by_name(configured: Settings, listener: Conn) -> None:
    submission = run(asubmit_task("billing.tasks.charge", args=[1]))
    [message] = received(listener, 1)
    assert message["task"] == "billing.tasks.charge"
    assert message["uuid"] == submission.uuid


def test_async_transaction_rollback_and_commit(
    configured: Settings, listener: Conn, pg_dsn: str
) -> None:
    async def scenario() -> str:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await tasks.add.aapply_async(args=[1, 1], connection=conn)
            await conn.rollback()
            committed = await tasks.add.aapply_async(args=[2, 2], connection=conn)
            await conn.commit()
            return committed.uuid

    committed_uuid = run(scenario())
    assert [m["uuid"] for m in received(listener, 1)] == [committed_uuid]
    assert nothing_more(listener)


def test_async_100_kb_payload(configured: Settings, listener: Conn) -> None:
    submission = run(tasks.add.adelay("y" * 100_000, 1))
    assembler = ChunkAssembler()
    results = [
        assembler.add(m) for m in received(listener, len(submission.payloads)) if is_chunk(m)
    ]
    assert len(results) == len(submission.payloads) > 12
    assert json.loads(next(r for r in results if r is not None)) == submission.message


def test_abatch(configured: Settings, listener: Conn) -> None:
    async def scenario() -> None:
        async with abatch():
            for n in range(20):
                await tasks.add.adelay(n, 0)
            tasks.add.delay(20, 0)  # a sync call inside the block joins the batch too

    run(scenario())
    assert [m["args"][0] for m in received(listener, 21)] == list(range(21))


def test_sync_connection_is_refused_by_the_async_api(configured: Settings, pg_dsn: str) -> None:
    async def scenario() -> None:
        with psycopg.connect(pg_dsn) as conn:
            await tasks.add.aapply_async(args=[1, 1], connection=conn)

    with pytest.raises(
        TypeError,
        match=r"^asubmit_task\(\) needs a psycopg AsyncConnection, got Connection; use submit_task\(\)",
    ):
        run(scenario())


def test_each_event_loop_gets_a_working_connection(configured: Settings, listener: Conn) -> None:
    # An application (or a test suite) may run several loops one after the other.
    first = asyncio.run(tasks.add.adelay(1, 0))
    second = asyncio.run(tasks.add.adelay(2, 0))
    assert [m["uuid"] for m in received(listener, 2)] == [first.uuid, second.uuid]
    run(asyncio.sleep(0))
