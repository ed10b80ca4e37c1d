"""Typed use of the publisher SDK that ``mypy --strict`` must accept as it is (test_typing.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_type

import psycopg

from dispatcher.contrib.django import delay_on_commit
from dispatcher.publish import (
    Batch,
    BatchBlock,
    BoundTask,
    BoundTaskFunction,
    ProcessorOptions,
    Queue,
    Submission,
    TaskFunction,
    batch,
    task,
)
from dispatcher.schema import Validator, load_schema, validator


@task
def cleanup(days: int) -> None:
    """Registered by a bare @task."""


@task
class Nightly:
    def run(self, day: str) -> None: ...


@task(queue="feeds", bind=True)
def import_all(dispatcher: BoundTask, feeds: list[str]) -> int:
    dispatcher.control("run", {"task": "feeds.fetch", "args": feeds})
    return len(feeds) + dispatcher.worker_id + len(dispatcher.uuid)


@task(queue="feeds", bind=True)
def untyped_bound(dispatcher: Any, feed: str) -> None: ...


@task(queue="plain", decorate=False)
def plain(x: int) -> int:
    return x


BIND = False  # a flag known only when the program runs: still a typed task


@task(queue="feeds", bind=BIND)
def flagged(feed: str) -> None: ...


@task(queue=lambda: "computed", timeout=5)
def send(to: str, subject: str = "hi", *, urgent: bool = False) -> str:
    return to


class Mailer:
    @task(queue="mail")
    @staticmethod
    def send(to: str) -> None: ...

    @staticmethod
    @task(queue="mail")
    def resend(to: str) -> None: ...


def uses(conn: psycopg.Connection[Any]) -> None:
    assert_type(Mailer.send.delay("a"), Submission)
    assert_type(Mailer.resend.delay("a"), Submission)
    assert_type(Mailer().send("a"), None)
    submission = cleanup.delay(3)
    assert_type(submission[0], Mapping[str, Any])
    assert_type(submission[1], str)
    block: BatchBlock = batch()
    with block as held:
        assert_type(held, Batch)
        print(len(held.submissions))
    options: ProcessorOptions = [{"delay": 3}]
    queue: Queue = "emails"
    cleanup.apply_async(args=[1], queue=queue, processor_options=options)
    cleanup_type: TaskFunction[[int], None] = cleanup
    assert_type(cleanup.delay(3), Submission)
    assert_type(Nightly, type[Nightly])
    import_all_type: BoundTaskFunction[[list[str]], int] = import_all
    assert_type(import_all.delay(["a"]), Submission)
    untyped_bound.delay("x")
    assert_type(plain(1), int)
    assert_type(send("a"), str)
    text: str = send.__name__ + send.__qualname__ + send.__module__ + (send.__doc__ or "")
    send.apply_async(args=["a"], connection=conn)
    delay_on_commit(send, "a", urgent=True)
    delay_on_commit(import_all, ["a"])
    delay_on_commit("feeds.fetch", 1, 2)
    delay_on_commit("plain", 1)  # decorate=False: by its name (its type is its own)
    assert_type(flagged.delay("x"), Submission)
    assert_type(validator("task-message"), Validator)
    assert_type(load_schema("config"), dict[str, Any])
    print(text, cleanup_type, import_all_type)


async def auses(conn: psycopg.AsyncConnection[Any]) -> None:
    await send.aapply_async(args=["a"], connection=conn)
    await import_all.adelay(["a"])
