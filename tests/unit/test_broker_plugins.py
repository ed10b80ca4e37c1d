"""Broker plug-ins: config sections checked against their own schema, both sides built."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import EntryPoint
from typing import Any

import anyio
import pytest

from dispatcher.config import ConfigError, load_settings, plugins
from dispatcher.publish import PublishError, routing
from dispatcher.server.brokers.base import (
    BrokerBase,
    BrokerContext,
    Deliver,
    ReplyingInBatches,
)
from dispatcher.server.brokers.capacity import CapacityGauge
from dispatcher.server.brokers.registry import create_brokers
from dispatcher.server.brokers.replies import ReplyRouter
from dispatcher.server.stats import ServiceStats
from support.paths import REPO

PLUGIN_SOURCE = REPO / "tests" / "plugins" / "dispatcher-example-broker" / "src"
SPOOL = {"directory": "/tmp/spool", "queues": ["work"]}


@pytest.fixture(autouse=True)
def example_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example plug-in, as if installed (its entry point, its code on the path)."""
    monkeypatch.syspath_prepend(str(PLUGIN_SOURCE))
    entry = EntryPoint(
        "example_spool", "dispatcher_example_broker.plugin:PLUGIN", plugins.ENTRY_POINT_GROUP
    )
    broken = EntryPoint("broken", "no_such_module:PLUGIN", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [entry, broken])
    plugins.load_plugin.cache_clear()
    plugins._explainer.cache_clear()
    yield
    plugins.load_plugin.cache_clear()
    plugins._explainer.cache_clear()


def config(**brokers: Any) -> dict[str, Any]:
    return {"version": 1, "brokers": brokers}


def problems(document: Mapping[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(document)
    return caught.value.problems


def test_a_plugin_section_is_kept_with_its_options_and_allow_list() -> None:
    settings = load_settings(
        {
            **config(example_spool={**SPOOL, "allow_control": ["alive"]}),
            "publish": {"default_broker": "example_spool"},
        }
    )
    section = settings.brokers.plugins["example_spool"]
    assert dict(section.options) == SPOOL
    assert section.allow_control == ("alive",)
    assert settings.brokers.names == ("example_spool",)
    assert settings.publish.default_broker == "example_spool"


def test_a_plugin_section_is_checked_against_the_plugins_schema_with_precise_paths() -> None:
    assert problems(
        config(example_spool={"directry": "x", "queues": ["ok", "a b"], "allow_control": [1]})
    ) == [
        "brokers.example_spool.allow_control[0]: expected string, got integer",
        "brokers.example_spool.directory: is required",
        "brokers.example_spool.directry: unknown key (did you mean 'directory'?)",
        "brokers.example_spool.queues[1]: not a valid channel name "
        "(1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':')",
    ]


def test_unknown_brokers_get_a_suggestion_among_builtins_and_plugins() -> None:
    assert problems(config(exampel_spool=SPOOL)) == [
        "brokers.exampel_spool: unknown key (did you mean 'example_spool'?)"
    ]
    assert problems(config(pg_notfy={"conninfo": "x"})) == [
        "brokers.pg_notfy: unknown key (did you mean 'pg_notify'?)"
    ]


def test_a_plugin_that_cannot_load_is_reported_at_its_section() -> None:
    [problem] = problems(config(broken={}))
    assert problem.startswith("brokers.broken: broker plug-in 'broken' (no_such_module:PLUGIN)")


def test_the_default_broker_must_be_configured() -> None:
    assert problems(
        {**config(example_spool=SPOOL), "publish": {"default_broker": "pg_notify"}}
    ) == [
        "publish.default_broker: names a broker not configured under 'brokers' "
        "(configured: example_spool)"
    ]


def test_the_publisher_routes_tasks_by_queue_then_default() -> None:
    settings = load_settings(
        {
            **config(
                example_spool=SPOOL,
                pg_notify={"conninfo": "dbname=x", "channels": ["fast"]},
                socket={"path": "d.sock"},
            ),
            "publish": {"default_broker": "example_spool"},
        }
    )
    assert routing.broker_for("fast", settings).name == "pg_notify"
    assert routing.broker_for("anything", settings).name == "example_spool"
    assert routing.default_broker(settings).default_queue == "work"
    assert routing.control_broker(settings).name == "socket"


def test_the_default_broker_is_pg_notify_else_the_only_one() -> None:
    settings = load_settings(config(example_spool=SPOOL, socket={"path": "d.sock"}))
    assert routing.default_broker(settings).name == "example_spool"
    both = load_settings(config(example_spool=SPOOL, pg_notify={"conninfo": "dbname=x"}))
    assert routing.default_broker(both).name == "pg_notify"


def context(settings: Any) -> BrokerContext:
    return BrokerContext("node-1", settings, ServiceStats(), CapacityGauge())


def test_the_service_builds_builtin_and_plugin_brokers_in_config_order() -> None:
    settings = load_settings(config(socket={"path": "d.sock"}, example_spool=SPOOL))
    brokers = create_brokers(context(settings))
    assert [(b.name, type(b).__name__) for b in brokers] == [
        ("socket", "SocketBroker"),
        ("example_spool", "SpoolBroker"),
    ]


class Recorder(BrokerBase):
    """A broker that records the replies it is asked to send; one of them fails."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sent: list[tuple[str, Mapping[str, Any]]] = []
        self.done = anyio.Event()

    async def receive(
        self, deliver: Deliver, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        deliver('{"task": "x"}', self.origin())
        await anyio.sleep_forever()

    def origin(self) -> Any:
        from dispatcher.server.origin import Origin

        return Origin(self.name, channel="q")

    async def reply(self, reply_to: str, reply: Mapping[str, Any]) -> None:
        if reply_to == "fails":
            raise OSError("the line is down")
        self.sent.append((reply_to, reply))
        if len(self.sent) == 2:
            self.done.set()


def test_replies_go_through_their_broker_in_order_and_a_failure_costs_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = Recorder("first"), Recorder("second")
    router = ReplyRouter([first, second])

    async def main() -> None:
        async with anyio.create_task_group() as group:
            await group.start(router.run)
            router.send("first", "a", {"n": 1})
            router.send("first", "fails", {"n": 2})
            router.send("second", "b", {"n": 3})
            router.send("first", "c", {"n": 4})
            router.send("nobody", "d", {"n": 5})
            with anyio.fail_after(10):
                await first.done.wait()
            group.cancel_scope.cancel()

    anyio.run(main)
    assert first.sent == [("a", {"n": 1}), ("c", {"n": 4})]
    assert second.sent == [("b", {"n": 3})]
    messages = [record.getMessage() for record in caplog.records]
    assert "could not send a control reply to fails over first: the line is down" in messages
    assert "no broker nobody to send the reply to d through" in messages


class BatchRecorder(Recorder):
    """A broker that sends the replies waiting together; one of them fails."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.batches: list[list[str]] = []

    async def reply_batch(
        self, replies: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[Exception | None]:
        self.batches.append([reply_to for reply_to, _ in replies])
        self.sent.extend(r for r in replies if r[0] != "fails")
        if len(self.sent) >= 3:
            self.done.set()
        return [OSError("the line is down") if to == "fails" else None for to, _ in replies]


def test_the_replies_waiting_go_together_to_a_broker_that_sends_them_in_batches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = BatchRecorder("batched")
    router = ReplyRouter([broker])
    assert isinstance(broker, ReplyingInBatches)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            await group.start(router.run)
            for reply_to in ("a", "fails", "b", "c"):  # queued before the sender runs
                router.send("batched", reply_to, {"to": reply_to})
            with anyio.fail_after(10):
                await broker.done.wait()
            group.cancel_scope.cancel()

    anyio.run(main)
    assert broker.batches == [["a", "fails", "b", "c"]]
    assert broker.sent == [("a", {"to": "a"}), ("b", {"to": "b"}), ("c", {"to": "c"})]
    messages = [record.getMessage() for record in caplog.records]
    assert "could not send a control reply to fails over batched: the line is down" in messages


def test_a_broker_delivers_with_its_origin_and_stops_receiving_on_request() -> None:
    broker = Recorder("mine")
    delivered: list[tuple[str, str | None, str]] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:
            await group.start(broker.run, lambda p, o: delivered.append((p, o.broker, o.channel)))
            broker.stop_receiving()
            await broker.reply("r", {"still": "replies"})
            await broker.reply("r", {"after": "stop"})
            group.cancel_scope.cancel()

    anyio.run(main)
    assert delivered == [('{"task": "x"}', "mine", "q")]
    assert broker.sent == [("r", {"still": "replies"}), ("r", {"after": "stop"})]


def test_the_capacity_gauge_wakes_a_waiting_broker() -> None:
    free = [0]
    gauge = CapacityGauge(lambda ahead: free[0] + ahead)
    seen: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:

            async def wait() -> None:
                seen.append(await gauge.wait_free())

            group.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert seen == []
            gauge.changed()  # nothing free yet: it keeps waiting
            await anyio.wait_all_tasks_blocked()
            assert seen == []
            free[0] = 3
            gauge.changed()

    anyio.run(main)
    assert (seen, gauge.free()) == ([3], 3)
    free[0] = -2
    assert gauge.free() == 0
    # Jobs allowed to wait ahead of the workers count as room.
    assert (gauge.free(ahead=2), gauge.free(ahead=5)) == (0, 3)


def test_each_brokers_view_of_the_capacity_is_its_own_and_woken_with_the_gauge() -> None:
    taking, others_free = [False], [-5]
    gauge = CapacityGauge(taking=lambda: taking[0])
    mine = gauge.view(lambda ahead: 1 + ahead)
    other = gauge.view(lambda ahead: others_free[0] + ahead)
    assert (mine.free(2), other.free(2)) == (0, 0)  # none until the service takes work
    taking[0] = True
    assert (mine.free(2), other.free(2), other.free(7)) == (3, 0, 2)
    seen: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:

            async def wait() -> None:
                seen.append(await other.wait_free(5))

            group.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            gauge.changed()  # wakes the views' waiters: still nothing free for this one
            await anyio.wait_all_tasks_blocked()
            assert seen == []
            others_free[0] = 0  # its jobs have started
            gauge.changed()

    anyio.run(main)
    assert seen == [5]


def test_every_view_of_the_capacity_says_how_long_the_workers_have_been_busy() -> None:
    busy = [0.0]
    gauge = CapacityGauge(busy_for=lambda: busy[0])
    mine = gauge.view(lambda ahead: ahead)
    assert (gauge.busy_for(), mine.busy_for(), CapacityGauge().busy_for()) == (0.0, 0.0, 0.0)
    busy[0] = 12.5
    assert (gauge.busy_for(), mine.busy_for()) == (12.5, 12.5)


def test_plugin_names_reach_the_publisher_without_server_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names: Sequence[str] = plugins.installed_plugins()
    assert names == ["broken", "example_spool"]
    assert plugins.load_plugin("example_spool").publisher == (
        "dispatcher_example_broker.publisher:create"
    )


def test_a_config_without_brokers_says_to_configure_one() -> None:
    with pytest.raises(PublishError) as caught:
        routing.default_broker(load_settings({"version": 1}))
    message = str(caught.value)
    assert message.startswith("config configures no broker: add one under brokers")
    assert "brokers.pg_notify" in message
    assert "default_broker" not in message  # naming a broker needs one configured first
