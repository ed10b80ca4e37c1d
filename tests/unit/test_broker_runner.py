"""A broker whose run() fails is run again after a growing pause: never lost in silence."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import pytest
from anyio.abc import TaskStatus

from dispatcher.server.brokers import runner
from dispatcher.server.brokers.base import BrokerBase, Deliver, StartRefused
from dispatcher.server.brokers.runner import run_broker
from dispatcher.server.origin import Origin

pytestmark = pytest.mark.timeout(10)

Step = Callable[[TaskStatus[None]], None]


class ScriptedBroker(BrokerBase):
    """Each run() takes the next step: raise (before or after saying it started), or serve."""

    def __init__(self, *steps: Step) -> None:
        super().__init__("scripted")
        self.steps = list(steps)
        self.runs = 0
        self.serving = anyio.Event()

    async def receive(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.runs += 1
        if self.steps:
            self.steps.pop(0)(task_status)
        task_status.started()
        deliver("payload", Origin("scripted"))
        self.serving.set()
        await anyio.sleep_forever()


def raises(exc: BaseException, *, after_start: bool = False) -> Step:
    def step(task_status: TaskStatus[None]) -> None:
        if after_start:
            task_status.started()
        raise exc

    return step


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "FIRST_RETRY", 0.01)


def run_until_serving(broker: ScriptedBroker, **options: object) -> list[str]:
    """Run *broker* under run_broker until it serves; return what was delivered."""
    delivered: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:
            await group.start(
                lambda task_status: run_broker(
                    broker,
                    lambda payload, origin: delivered.append(payload),
                    task_status=task_status,
                    **options,  # type: ignore[arg-type]
                )
            )
            with anyio.fail_after(5):
                await broker.serving.wait()
            group.cancel_scope.cancel()

    anyio.run(main)
    return delivered


def test_a_broker_that_fails_after_its_start_is_run_again_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = ScriptedBroker(raises(ValueError("a bug"), after_start=True))
    with caplog.at_level(logging.INFO, logger="dispatcher.brokers"):
        assert run_until_serving(broker) == ["payload"]
    assert broker.runs == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("the scripted broker stopped: a bug; starting it again in 0.0")


def test_a_broker_that_fails_before_its_start_lets_the_service_start_and_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = ScriptedBroker(
        raises(RuntimeError("can't start new thread")),
        raises(ExceptionGroup("unhandled errors in a TaskGroup", [OSError("no route")])),
    )
    with caplog.at_level(logging.INFO, logger="dispatcher.brokers"):
        assert run_until_serving(broker) == ["payload"]
    assert broker.runs == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].startswith(
        "cannot start the scripted broker: can't start new thread: the process limit reached?"
    )
    # A group says what its errors were, not that it is a group.
    assert errors[1].startswith("the scripted broker stopped: no route; starting it again in")


def test_the_pause_grows_while_the_broker_keeps_failing(caplog: pytest.LogCaptureFixture) -> None:
    failures = [raises(ValueError("again"), after_start=True) for _ in range(4)]
    with caplog.at_level(logging.INFO, logger="dispatcher.brokers"):
        run_until_serving(ScriptedBroker(*failures))
    pauses = [
        float(r.getMessage().rpartition(" in ")[2].removesuffix(" s"))
        for r in caplog.records
        if r.levelno == logging.ERROR
    ]
    assert len(pauses) == 4
    assert pauses == sorted(pauses)
    assert pauses[-1] > pauses[0]


def test_a_refusal_before_the_start_reaches_the_service_and_a_later_one_stops_it() -> None:
    broker = ScriptedBroker(raises(StartRefused("the path is taken")))
    with pytest.raises(StartRefused):
        anyio.run(lambda: run_broker(broker, lambda payload, origin: None))
    refusals: list[StartRefused] = []
    broker = ScriptedBroker(
        raises(OSError("lost"), after_start=True), raises(StartRefused("the path is taken"))
    )

    async def main() -> None:
        with anyio.fail_after(5):
            await run_broker(broker, lambda payload, origin: None, on_refused=refusals.append)

    anyio.run(main)  # (it returns: the service stops)
    assert [str(refusal) for refusal in refusals] == ["the path is taken"]


def test_a_broker_that_fails_while_the_service_stops_is_not_run_again() -> None:
    stopping = anyio.Event()
    broker = ScriptedBroker(raises(OSError("lost"), after_start=True))

    async def main() -> None:
        stopping.set()
        with anyio.fail_after(5):
            await run_broker(broker, lambda payload, origin: None, stopping=stopping)

    anyio.run(main)  # (it returns)
    assert broker.runs == 1
