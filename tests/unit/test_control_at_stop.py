"""Control commands being answered when the service stops: each is settled before the last flush.

A stored control message (a durable queue's row) is settled once answered, or handed back
(``abandoned``: delivered again) when the stop cuts it short; the jobs a ``cancel`` took are
settled ``cancelled``, every one, before the stop hands its last outcomes to the brokers.
The service here never starts its workers: a task group stands in for the one
``Service.run`` opens, and the stop is the one ``Service.run`` makes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatcher.config import reset, setup
from dispatcher.server import control_answers, service_brokers
from dispatcher.server.brokers.base import BrokerBase, Settled
from dispatcher.server.control_walks import WALK_SLICE
from dispatcher.server.origin import Origin
from dispatcher.server.service import Service
from support.scheduling import make_job


class Spool(BrokerBase):
    """A durable broker that records the outcomes it is told, in order."""

    def __init__(self) -> None:
        super().__init__("spool")
        self.settled: list[tuple[str, str]] = []

    async def receive(self, deliver: Any, *, task_status: Any = None) -> None:
        await anyio.sleep_forever()

    async def acknowledge(self, settled: Sequence[Settled]) -> None:
        self.settled += [(each.receipt, each.outcome) for each in settled]


@pytest.fixture
def spool(monkeypatch: pytest.MonkeyPatch) -> Spool:
    spool = Spool()
    built = service_brokers.create_brokers
    monkeypatch.setattr(service_brokers, "create_brokers", lambda *args: [*built(*args), spool])
    return spool


@pytest.fixture
def service(tmp_path: Path, spool: Spool) -> Iterator[Service]:
    settings = setup({"version": 1, "brokers": {"socket": {"path": str(tmp_path / "d.sock")}}})
    service = Service(settings)
    service.intake.catalogue.learn(frozenset({"app.work", "app.other"}))
    yield service
    reset()


def stored(
    control: str, receipt: str, replies: list[dict[str, Any]], **data: Any
) -> tuple[str, str, Origin]:
    """A control message as a durable broker delivers it: payload, queue, origin."""
    message = {"control": control, "control_data": data, "reply_to": "r"}
    answer = lambda to, reply: replies.append(reply)  # noqa: E731
    return json.dumps(message), "q", Origin("spool", answer, channel="q", receipt=receipt)


async def stop(service: Service) -> None:
    """Stop as ``Service.run`` does: shut down, then cancel the service's own tasks."""
    await service._shut_down()
    assert service.answers.tasks is not None
    service.answers.tasks.cancel_scope.cancel()


def backlog(service: Service, count: int) -> list[str]:
    """*count* durable jobs waiting for a worker; their receipts."""
    receipts = []
    for n in range(count):
        job = make_job("app.work", n)._replace(broker="spool", receipt=f"job-{n}")
        assert service.scheduler.submit(job)
        receipts.append(f"job-{n}")
    return receipts


def test_a_control_message_answered_as_the_service_stops_is_settled(
    service: Service, spool: Spool
) -> None:
    replies: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with anyio.create_task_group() as tasks:
            service.answers.tasks = tasks
            service.intake.receive(*stored("running", "ctl-1", replies, task="app.work"))
            await stop(service)

    anyio.run(scenario)
    assert spool.settled == [("ctl-1", "ok")]
    assert [sorted(reply) for reply in replies] == [["node_id"]]  # answered: nothing runs


def test_control_messages_the_stop_cuts_short_are_handed_back_to_run_again(
    service: Service, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_answers, "CONTROL_WAIT", 0.05)
    receipts = backlog(service, 10)
    replies: list[dict[str, Any]] = []
    told: list[dict[str, Any]] = []
    socket = Origin("socket", reply=lambda to, reply: told.append(reply), channel="socket:1")

    async def scenario() -> None:
        async with anyio.create_task_group() as tasks:
            service.answers.tasks = tasks
            # Another command walking a long backlog, all along: these wait for it.
            async with service._commands._walking:
                service.intake.receive(*stored("running", "ctl-1", replies, task="app.work"))
                service.intake.receive(*stored("cancel", "ctl-2", replies, task="app.work"))
                message = {"control": "running", "reply_to": "r"}
                service.intake.receive(json.dumps(message), "socket:1", socket)
                await stop(service)

    anyio.run(scenario)
    outcomes = Counter(spool.settled)
    # Each once: the cancel never ran, so its jobs are abandoned as the service stops.
    assert outcomes == Counter({(receipt, "abandoned"): 1 for receipt in receipts}) + Counter(
        {("ctl-1", "abandoned"): 1, ("ctl-2", "abandoned"): 1}
    )
    assert replies == []  # those come when they run again
    assert [reply["error"] for reply in told] == ["the service stopped before it could answer"]


@pytest.mark.parametrize("wait", [control_answers.CONTROL_WAIT, 0])
def test_a_cancel_of_a_long_backlog_under_way_at_the_stop_settles_every_job_it_took_once(
    service: Service, spool: Spool, monkeypatch: pytest.MonkeyPatch, wait: float
) -> None:
    """Whether the stop waits for it or not: once the jobs are taken, the cancel ends."""
    monkeypatch.setattr(control_answers, "CONTROL_WAIT", wait)
    receipts = backlog(service, 5 * WALK_SLICE)
    replies: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with anyio.create_task_group() as tasks:
            service.answers.tasks = tasks
            service.intake.receive(*stored("cancel", "ctl-1", replies, task="app.work"))
            with anyio.fail_after(5):
                while service.scheduler.queued:  # taken, and settled a slice at a time
                    await anyio.sleep(0)
            await stop(service)

    anyio.run(scenario)
    outcomes = Counter(spool.settled)
    assert outcomes == Counter({(receipt, "cancelled"): 1 for receipt in receipts}) + Counter(
        {("ctl-1", "ok"): 1}
    )
    assert [reply.get("error") for reply in replies] == [None]
