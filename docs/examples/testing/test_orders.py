"""The app's tests: no PostgreSQL, no dispatcher service, no config."""

from __future__ import annotations

import asyncio
import datetime

import orders
import pytest

from dispatcher.publish import InvalidSubmission
from dispatcher.testing import Captured, Eager, eager


@pytest.fixture(autouse=True)
def _fresh_shop() -> None:
    orders.OUTBOX.clear()
    orders.STOCK.update({"apple": 5, "pear": 1})


def test_placing_an_order_runs_its_tasks(dispatcher_eager: Eager) -> None:
    orders.place_order(7, "ann@example.com", {"apple": 2})
    assert orders.STOCK["apple"] == 3
    assert orders.OUTBOX == ["ann@example.com: order 7 confirmed"]
    assert [run.task for run in dispatcher_eager.runs] == [
        "orders.audit",  # submitted by reserve_stock, so it ended first
        "orders.reserve_stock",
        "orders.send_confirmation",
    ]
    assert dispatcher_eager.runs[0].result == "RESERVED 7"


def test_placing_an_order_queues_two_tasks(dispatcher_captured: Captured) -> None:
    orders.place_order(8, "bob@example.com", {"pear": 1})
    assert orders.OUTBOX == []  # nothing ran yet
    [email] = dispatcher_captured.for_task(orders.send_confirmation)
    assert (email.queue, email.args, email.options) == (
        "emails",
        [8, "bob@example.com"],
        {"timeout": 30},
    )
    [reserve] = dispatcher_captured.for_task("orders.reserve_stock")
    assert reserve.options == {"bind": True}
    dispatcher_captured.run_all()
    assert orders.OUTBOX == ["bob@example.com: order 8 confirmed"]
    assert [r.task for r in dispatcher_captured.tasks][-1] == "orders.audit"


def test_a_task_error_reaches_the_test(dispatcher_eager: Eager) -> None:
    with pytest.raises(ValueError, match="not enough pear"):
        orders.place_order(9, "cy@example.com", {"pear": 3})


def test_errors_can_be_recorded_instead() -> None:
    with eager(propagate=False) as mode:
        orders.place_order(10, "di@example.com", {"pear": 3})
    failed = mode.runs[0]
    assert (failed.task, failed.outcome) == ("orders.reserve_stock", "error")
    assert orders.OUTBOX == ["di@example.com: order 10 confirmed"]


def test_arguments_are_checked_as_when_publishing(dispatcher_eager: Eager) -> None:
    with pytest.raises(InvalidSubmission, match="not JSON-serialisable"):
        # A mistake a type checker also reports: made here on purpose.
        orders.send_confirmation.delay(datetime.date.today(), "x@example.com")  # type: ignore[arg-type]
    assert dispatcher_eager.runs == []


def test_async_code_awaits_coroutine_tasks(dispatcher_eager: Eager) -> None:
    submission = asyncio.run(orders.audit.adelay("shipped"))
    assert submission.channel == "default"  # no config: dispatcher.testing's default queue
    assert dispatcher_eager.run_of(submission).result == "SHIPPED"
