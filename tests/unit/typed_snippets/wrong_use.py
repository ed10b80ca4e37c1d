"""Mistakes ``mypy --strict`` must report: each line marked ``# error: [code]`` (test_typing.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from dispatcher.contrib.django import delay_on_commit
from dispatcher.publish import BoundTask, Submission, task
from dispatcher.schema import load_schema, validator


@task
def cleanup(days: int) -> None: ...


@task(bind=True)
def import_all(dispatcher: BoundTask, feeds: list[str]) -> None: ...


@task(decorate=False)
def plain(x: int) -> int:
    return x


def uses(conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]) -> None:
    cleanup.delay("3")  # error: [arg-type]
    import_all.delay(None, ["a"])  # error: [call-arg]
    plain.delay(1)  # error: [attr-defined]
    cleanup.apply_async(args=[3], connection=aconn)  # error: [arg-type]
    delay_on_commit(cleanup, "3")  # error: [call-overload]
    delay_on_commit(import_all)  # error: [call-overload]
    validator("task-mesage")  # error: [arg-type]
    load_schema("nope")  # error: [arg-type]


async def auses(conn: psycopg.Connection[Any]) -> None:
    await cleanup.aapply_async(args=[3], connection=conn)  # error: [arg-type]


def unpacks(submission: Submission) -> None:
    channel: int = submission[1]  # error: [assignment]
    body: str = submission[0]  # error: [assignment]
    either: Mapping[str, Any] = submission[2]  # error: [assignment]
    print(channel, body, either)
