"""The publisher warns, once, about a queue no service listens on and a mistyped task name."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.publish import InvalidSubmission, message_routes, prepare_submission, submit_task
from dispatcher.testing import captured
from support import testing_tasks as tasks

CONNINFO = "host=127.0.0.1 port=9 dbname=none"


def configure(**brokers: Any) -> None:
    setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": CONNINFO, "channels": ["myapp", "reports"]},
                **brokers,
            },
        }
    )


@pytest.fixture(autouse=True)
def _no_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    tasks.forbid_database(monkeypatch, tmp_path)
    caplog.set_level(logging.WARNING, logger="dispatcher.publish")
    yield
    reset()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dispatcher.publish" and r.levelno == logging.WARNING
    ]


def test_a_mistyped_queue_is_warned_about_once_with_a_suggestion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure()
    for _ in range(3):
        submission = prepare_submission(tasks.add, args=[1, 2], queue="my_app")
    assert submission.channel == "my_app"  # still submitted as asked
    [warning] = warnings_of(caplog)
    assert warning == (
        "queue 'my_app' is not one of brokers.pg_notify.channels (myapp, reports) in config: "
        "no service configured there listens on it, tasks sent to it are lost unless another "
        "service does; did you mean 'myapp'?"
    )


def test_a_queue_far_from_every_channel_gets_no_suggestion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure()
    prepare_submission(tasks.add, args=[1, 2])  # @task(queue="orders")
    [warning] = warnings_of(caplog)
    assert warning.startswith("queue 'orders' is not one of brokers.pg_notify.channels")
    assert "did you mean" not in warning


def test_durable_queues_are_suggested_and_known(caplog: pytest.LogCaptureFixture) -> None:
    configure(pg_queue={"queues": ["invoices"]})
    prepare_submission(tasks.add, args=[1, 2], queue="invoices")
    prepare_submission(tasks.add, args=[1, 2], queue="myapp")
    assert warnings_of(caplog) == []
    prepare_submission(tasks.add, args=[1, 2], queue="invo")
    [warning] = warnings_of(caplog)
    assert "nor of brokers.pg_queue.queues" in warning
    assert warning.endswith("did you mean 'invoices'?")


def test_a_near_miss_of_a_durable_queue_is_refused_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A typo must not turn a job stored for sure into a NOTIFY that nobody hears.
    configure(pg_queue={"queues": ["payments"]})
    for _ in range(2):
        with pytest.raises(InvalidSubmission) as caught:
            prepare_submission(tasks.add, args=[1, 2], queue="paymnets")
        assert str(caught.value) == (
            "queue 'paymnets' is not one of brokers.pg_queue.queues in config, but close to "
            "the durable queue 'payments': sent by NOTIFY instead, its tasks would be lost where "
            "nobody listens (list it under brokers.pg_notify.channels to send there on purpose)"
        )
    prepare_submission(tasks.add, args=[1, 2], queue="payments_fast")  # a channel of its own
    configure(
        pg_notify={"conninfo": CONNINFO, "channels": ["paymnets"]},
        pg_queue={"queues": ["payments"]},
    )
    assert prepare_submission(tasks.add, args=[1, 2], queue="paymnets").channel == "paymnets"


@pytest.mark.parametrize(
    ("queue", "durable"),
    [
        ("paymnets", "payments"),  # two letters swapped
        ("payment", "payments"),  # one missing
        ("Payments", "payments"),  # case
        ("payments-eu", "payments_eu"),  # separators
        ("notifcaitons", "notifications"),  # two slips in a long word
    ],
)
def test_likely_typos_of_a_durable_queue_are_refused(queue: str, durable: str) -> None:
    configure(pg_queue={"queues": [durable]})
    with pytest.raises(InvalidSubmission, match=f"but close to the durable queue '{durable}'"):
        prepare_submission(tasks.add, args=[1, 2], queue=queue)


@pytest.mark.parametrize(
    ("queue", "durable"),
    [
        ("tenant1_tasks", "tenant2_tasks"),  # another number of a series
        ("orders_sync", "orders_async"),  # another word, one letter longer
        ("orders_us", "orders_uk"),  # a short word: another one
        ("reports_v2", "reports_v3"),
        ("sync_orders", "orders_sync"),  # the words in another order
        ("orders_fast", "orders"),  # a word added
    ],
)
def test_other_names_close_to_a_durable_queue_are_let_through(
    queue: str, durable: str, caplog: pytest.LogCaptureFixture
) -> None:
    configure(pg_queue={"queues": [durable]})
    assert prepare_submission(tasks.add, args=[1, 2], queue=queue).channel == queue
    [warning] = warnings_of(caplog)  # no channel of the config: warned about, sent
    assert warning.startswith(f"queue {queue!r} is not one of brokers.pg_notify.channels")


def test_each_config_is_checked_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    configure()
    prepare_submission(tasks.add, args=[1, 2], queue="my_app")
    configure()
    prepare_submission(tasks.add, args=[1, 2], queue="my_app")
    assert len(warnings_of(caplog)) == 2


def test_no_warning_without_config_or_without_channels(caplog: pytest.LogCaptureFixture) -> None:
    connection: Any = object()
    with captured():
        submit_task(tasks.add, args=[1, 2], queue="my_app", connection=connection)
    setup(
        {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": CONNINFO, "default_publish_channel": "x"}},
        }
    )
    prepare_submission(tasks.add, args=[1, 2], queue="my_app")
    assert warnings_of(caplog) == []


def test_the_check_runs_once_per_queue_not_per_submission(monkeypatch: pytest.MonkeyPatch) -> None:
    configure()
    checked: list[str] = []
    monkeypatch.setattr(
        message_routes, "check_queue", lambda queue, settings: checked.append(queue)
    )
    for _ in range(100):
        prepare_submission(tasks.add, args=[1, 2], queue="myapp")
        prepare_submission(tasks.add, args=[1, 2], queue="reports")
    assert checked == ["myapp", "reports"]


def test_a_task_name_close_to_a_registered_one_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure()
    for _ in range(2):
        prepare_submission("support.testing_tasks.asyncdouble", args=[1], queue="myapp")
    [warning] = warnings_of(caplog)
    assert warning == (
        "task 'support.testing_tasks.asyncdouble' is not registered in this process; "
        "did you mean 'support.testing_tasks.async_double'? "
        "(submitting it by name anyway)"
    )


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        # The module alone is no likeness (whatever other test modules have registered).
        ("support.testing_tasks.qwxyz", None),
        ("support.testing_tasks.echo", None),  # nor is a shared prefix (echo_types, chain)
        ("support.testing_tasks.chian", "support.testing_tasks.chain"),
        ("support.testing_tasks.asyncdoubel", "support.testing_tasks.async_double"),
        ("suport.testing_tasks.exits", "support.testing_tasks.exits"),
    ],
)
def test_a_suggestion_is_a_close_function_name_not_merely_the_same_module(
    caplog: pytest.LogCaptureFixture, name: str, suggested: str | None
) -> None:
    configure()
    prepare_submission(name, queue="myapp")
    warnings = warnings_of(caplog)
    if suggested is None:
        assert warnings == []
    else:
        assert warnings == [
            f"task {name!r} is not registered in this process; did you mean {suggested!r}? "
            "(submitting it by name anyway)"
        ]


def test_names_of_other_code_bases_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    configure()
    prepare_submission("billing.invoicing.charge_card", args=[1], queue="myapp")
    prepare_submission(tasks.add, args=[1, 2], queue="myapp")
    assert warnings_of(caplog) == []


def test_a_testing_mode_refuses_a_near_miss_without_the_contradicting_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dispatcher.publish import InvalidSubmission
    from dispatcher.testing import eager

    with eager(), pytest.raises(InvalidSubmission, match="did you mean") as refused:
        submit_task("support.testing_tasks.asyncdoubel", args=[1])
    assert "registered tasks only" in str(refused.value)
    assert warnings_of(caplog) == []


def test_a_task_of_the_script_being_run_is_warned_about_as_no_service_can_run_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dispatcher.publish import registry, task

    script: dict[str, Any] = {"__name__": "__main__"}
    exec("def print_hello(): ...\ndef named(): ...", script)
    try:
        task(queue="myapp")(script["print_hello"])
        task(queue="myapp", name="myapp.tasks.named")(script["named"])  # named on purpose
    finally:
        registry.unregister("__main__.print_hello")
        registry.unregister("myapp.tasks.named")
    assert warnings_of(caplog) == [
        "task '__main__.print_hello' is defined in the script being run: a service runs only "
        "tasks of the modules it imports (tasks.modules), so it will reject this name; define "
        "the task in such a module and import it from there, or submit it by that module's "
        "name (submit_task('myapp.tasks.print_hello'))"
    ]
