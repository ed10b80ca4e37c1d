"""dispatcherd's publisher drives our service: every option of ``.delay()``/``.apply_async()``.

The tasks are :mod:`support.dispatcherd_tasks` (dispatcherd's ``@task``), published by
dispatcherd 2026.5.27 in its own environment with a dispatcherd config file (see
``conftest.py``). Our service runs them as registered by :mod:`support.dispatcherd_tasks_ours`
(same names): these tests check the wire format. The last ones check what a user moving
from dispatcherd changes nothing for: dispatcherd's ``@task`` registrations honoured, and
dispatcherd's config file loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import dispatcherd
from support.dispatcherd import Dispatcherd, Driver, environment_variables
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90, func_only=True)]

StartService = Callable[..., ServiceProcess]
TASKS = "support.dispatcherd_tasks."


def publish(driver: Driver, task: str, *args: Any, method: str = "delay", **options: Any) -> Any:
    """Publish :mod:`support.dispatcherd_tasks` ``.task`` with dispatcherd; return (body, channel)."""
    kwargs = options.pop("kwargs", {})
    sent = driver.call(
        "publish", task=task, method=method, args=list(args), kwargs=kwargs, options=options
    )
    return sent["body"], sent["channel"]


def by_task(records: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [record for record in records if record["task"] == task]


def test_delay_apply_async_and_submit_task_with_arguments_and_queues(
    start_service: StartService,
    our_config: dict[str, Any],
    driver: Driver,
    evidence: Evidence,
    channel: str,
    other_channel: str,
) -> None:
    start_service(our_config)
    path = str(evidence.path)
    sent = [
        publish(driver, "record", path, "delay", 1, kwargs={"k": "v"}),
        publish(
            driver,
            "record",
            path,
            "apply",
            method="apply_async",
            kwargs={"k": [1, 2]},
            queue=other_channel,
            uuid="u-apply",
        ),
        publish(
            driver,
            "record",
            path,
            "submit",
            method="submit_task",
            queue=other_channel,
            uuid="u-submit",
        ),
        publish(driver, "Adder", path, 2, 3, method="apply_async"),
        publish(driver, "on_chosen_queue", path),
        publish(driver, "undecorated", path, "u", method="submit_task", timeout=5),
    ]
    assert [used for _, used in sent] == [
        channel,
        other_channel,
        other_channel,
        channel,
        other_channel,
        channel,
    ]
    bodies = [body for body, _ in sent]
    assert [body["task"] for body in bodies] == [
        *[TASKS + "record"] * 3,
        TASKS + "Adder",
        TASKS + "on_chosen_queue",
        TASKS + "undecorated",
    ]
    assert [body["uuid"] for body in bodies[1:3]] == ["u-apply", "u-submit"]
    assert all(isinstance(body["time_pub"], float) for body in bodies)
    assert bodies[-1]["timeout"] == 5

    records = evidence.wait_for(6)
    assert {record["runner"] for record in records} == {"dispatcher"}
    recorded = sorted((r["args"], r["kwargs"]) for r in by_task(records, "record"))
    assert recorded == [
        (["apply"], {"k": [1, 2]}),
        (["delay", 1], {"k": "v"}),
        (["submit"], {}),
    ]
    assert by_task(records, "Adder")[0]["sum"] == 5
    assert len(by_task(records, "on_chosen_queue")) == 1
    assert by_task(records, "undecorated")[0]["args"] == ["u"]


def test_bind_from_the_registration_and_from_the_message(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    start_service(our_config)
    path = str(evidence.path)
    registered, _ = publish(driver, "bound", path, "registered")
    by_message, _ = publish(
        driver, "bound_by_message", path, method="apply_async", bind=True, uuid="u-bind"
    )
    assert "bind" not in registered  # dispatcherd leaves it to the registration
    assert by_message["bind"] is True

    records = evidence.wait_for(2)
    [bound] = by_task(records, "bound")
    assert bound["uuid"] == registered["uuid"]
    assert bound["label"] == "registered"
    assert isinstance(bound["worker_id"], int)
    [bound_by_message] = by_task(records, "bound_by_message")
    assert bound_by_message["uuid"] == "u-bind"


def test_large_messages_are_chunked_by_dispatcherd_and_run_intact(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    start_service(our_config)
    path = str(evidence.path)
    ascii_text = "x" * 9000
    wide_text = "é€😀" * 1500  # 13.5 kB of UTF-8: chunks cut between characters
    many = {f"key{i}": "v" * 50 for i in range(300)}
    publish(driver, "record", path, ascii_text, uuid="u-ascii", method="apply_async")
    publish(driver, "record", path, wide_text, method="apply_async", uuid="u-wide")
    publish(driver, "record", path, kwargs=many)
    records = evidence.wait_for(3)
    assert sorted(len(json.dumps(r["args"] + [r["kwargs"]])) for r in records)[0] > 8000
    assert any(r["args"] == [ascii_text] for r in records)
    assert any(r["args"] == [wide_text] for r in records)
    assert any(r["kwargs"] == many for r in records)


def test_timeout_from_the_registration_and_from_the_submission(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    start_service(our_config)
    path = str(evidence.path)
    registered, _ = publish(driver, "sleeper_with_timeout", path, 30)
    submitted, _ = publish(
        driver, "sleeper", path, 30, "submitted", method="apply_async", timeout=0.3
    )
    assert registered["timeout"] == 0.5
    assert submitted["timeout"] == 0.3

    def interrupted() -> list[dict[str, Any]]:
        found = [r for r in evidence.records() if r.get("event") == "interrupted"]
        return found if len(found) == 2 else []

    records = wait_until(interrupted, 15)
    assert sorted(r["label"] for r in records) == ["submitted", "with_timeout"]
    assert not [r for r in evidence.records() if r.get("event") == "end"]


def test_delay_from_processor_options(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    start_service(our_config)
    path = str(evidence.path)
    registered, _ = publish(driver, "delayed", path)
    submitted, _ = publish(
        driver,
        "record",
        path,
        "later",
        method="apply_async",
        processor_options=[["Delayer", {"delay": 0.6}]],
    )
    immediate, _ = publish(
        driver, "record", path, "now", method="apply_async", processor_options=[["Delayer", {}]]
    )
    assert (registered["delay"], submitted["delay"], immediate["delay"]) == (0.4, 0.6, 0.0)

    records = evidence.wait_for(3)
    [delayed] = by_task(records, "delayed")
    assert delayed["time"] - registered["time_pub"] >= 0.4
    later = next(r for r in records if r.get("args") == ["later"])
    assert later["time"] - submitted["time_pub"] >= 0.6
    assert records[0].get("args") == ["now"]


def test_on_duplicate_from_the_registration_and_from_processor_options(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    start_service(our_config)
    path = str(evidence.path)
    queue_one = {
        "method": "apply_async",
        "processor_options": [["CompatParams", {"on_duplicate": "queue_one"}]],
    }
    kinds = (
        ("discard", "discarded_duplicate", (0.5,), {}),  # @task(on_duplicate=...), deprecated
        ("serial", "one_at_a_time", (0.2,), {}),  # @task(processor_options=(Blocker.Params(...),))
        ("queue_one", "sleeper", (0.5, "queue_one"), queue_one),  # at submission
    )

    def events(label: str) -> list[str]:
        return [r["event"] for r in evidence.records() if r.get("label") == label]

    # Each duplicate arrives while the first of its kind runs.
    for label, task, args, options in kinds:
        first, _ = publish(driver, task, path, *args, **options)
        assert first["on_duplicate"] == label
        wait_until(lambda label=label: "start" in events(label), 10)
        for _ in range(2):
            publish(driver, task, path, *args, **options)
    wait_until(
        lambda: events("serial").count("end") == 3 and events("queue_one").count("end") == 2, 20
    )
    wait_until(lambda: "end" in events("discard"), 10)
    publish(driver, "record", path, "marker")  # anything held back starts before it
    wait_until(lambda: any(r.get("args") == ["marker"] for r in evidence.records()), 10)
    assert events("discard") == ["start", "end"]
    assert events("serial") == ["start", "end"] * 3  # one at a time
    assert events("queue_one") == ["start", "end"] * 2


# -- what a user moving from dispatcherd changes nothing for (not built yet) ----------------


def wait_for_evidence_or_refusal(
    service: ServiceProcess, evidence: Evidence, count: int
) -> list[dict[str, Any]]:
    """The evidence of *count* tasks; fail as soon as the service refuses one, or is gone."""

    def settled() -> bool:
        if service.process is not None and service.process.poll() is not None:
            raise AssertionError(f"our service exited; its log:\n{service.log}")
        if "rejected" in service.log:
            raise AssertionError(f"our service refused the task; its log:\n{service.log}")
        return len(evidence.records()) >= count

    wait_until(settled, 15)
    return evidence.records()


def start_or_fail(
    start_service: StartService, config: dict[str, Any], env: dict[str, str]
) -> ServiceProcess:
    """Start our service; fail at once if it exits instead of becoming ready."""
    service = start_service(config, wait=False, env=env)

    def ready() -> bool:
        assert service.process is not None
        if service.process.poll() is not None:
            raise AssertionError(f"our service exited at start; its log:\n{service.log}")
        return "listening on channels" in service.log

    wait_until(ready, 20)
    return service


def with_dispatcherd_installed(dispatcherd_env: Dispatcherd) -> dict[str, str]:
    """Our service's environment with dispatcherd importable, as if installed beside ours
    (see :attr:`support.dispatcherd.Dispatcherd.overlay`, and the last test here)."""
    return {"PYTHONPATH": environment_variables(dispatcherd_env.overlay)["PYTHONPATH"]}


def their_service_config(pg_dsn: str, channels: list[str], module: str) -> dict[str, Any]:
    """A dispatcherd config naming its task module as dispatcherd's fork server preloads it."""
    return dispatcherd.config(
        pg_dsn, channels, node_id=channels[0], process_manager_kwargs={"preload_modules": [module]}
    )


def test_our_service_honours_dispatcherd_task_registrations(
    start_service: StartService,
    our_config: dict[str, Any],
    dispatcherd_env: Dispatcherd,
    driver: Driver,
    evidence: Evidence,
) -> None:
    our_config["tasks"]["modules"] = ["support.dispatcherd_tasks"]  # dispatcherd's @task only
    service = start_or_fail(start_service, our_config, with_dispatcherd_installed(dispatcherd_env))
    path = str(evidence.path)
    body, _ = publish(driver, "bound", path, "honoured")  # bind from dispatcherd's registration
    publish(driver, "record", path, "honoured")
    records = wait_for_evidence_or_refusal(service, evidence, 2)
    assert by_task(records, "bound")[0]["uuid"] == body["uuid"]
    assert by_task(records, "record")[0]["args"] == ["honoured"]
    assert {r["runner"] for r in records} == {"dispatcher"}


def test_our_service_loads_a_dispatcherd_config_file(
    start_service: StartService,
    pg_dsn: str,
    channel: str,
    other_channel: str,
    driver: Driver,
    evidence: Evidence,
) -> None:
    config = their_service_config(
        pg_dsn, [channel, other_channel], "support.dispatcherd_tasks_ours"
    )
    service = start_or_fail(start_service, config, {})
    publish(driver, "record", str(evidence.path), "from a dispatcherd config")
    records = wait_for_evidence_or_refusal(service, evidence, 1)
    assert records[0]["args"] == ["from a dispatcherd config"]
    [alive] = driver.call("control_with_reply", command="alive")
    assert alive == {"node_id": channel}  # service.main_kwargs.node_id


def test_a_dispatcherd_user_swaps_the_service_and_changes_nothing(
    start_service: StartService,
    pg_dsn: str,
    channel: str,
    other_channel: str,
    dispatcherd_env: Dispatcherd,
    driver: Driver,
    evidence: Evidence,
) -> None:
    config = their_service_config(pg_dsn, [channel, other_channel], "support.dispatcherd_tasks")
    service = start_or_fail(start_service, config, with_dispatcherd_installed(dispatcherd_env))
    path = str(evidence.path)
    publish(driver, "record", path, "unchanged")
    publish(driver, "sleeper_with_timeout", path, 30)
    publish(driver, "on_chosen_queue", path)
    records = wait_for_evidence_or_refusal(service, evidence, 3)
    assert by_task(records, "record")[0]["args"] == ["unchanged"]
    wait_until(lambda: any(r.get("event") == "interrupted" for r in evidence.records()), 10)
    assert {r["runner"] for r in evidence.records()} == {"dispatcher"}


SHOW_REGISTRATIONS = """
import sys, psycopg, support.dispatcherd_tasks
from dispatcherd.registry import registry
print(sorted(method.serialize_task() for method in registry.registry))
print("dispatcher.publish" in sys.modules, psycopg.__file__.startswith(sys.prefix))
"""


def test_the_task_module_registers_with_dispatcherd_alone(
    dispatcherd_env: Dispatcherd, tmp_path: Path
) -> None:
    """The module of the tests above registers its tasks with dispatcherd, not with us; and
    our environment, with the overlay on its path, imports it as if dispatcherd were
    installed there, keeping its own psycopg (the setting of the tests above)."""
    expected = [TASKS + name for name in ("Adder", "bound", "bound_by_message", "delayed")]
    for python, path in (
        (str(dispatcherd_env.python), ()),  # dispatcherd's environment: no dispatcher there
        (sys.executable, (dispatcherd_env.overlay,)),  # ours, with dispatcherd beside
    ):
        done = subprocess.run(
            [python, "-c", SHOW_REGISTRATIONS],
            capture_output=True,
            text=True,
            env=environment_variables(*path),
            cwd=tmp_path,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        names, imports = done.stdout.splitlines()
        assert set(expected) <= set(json.loads(names.replace("'", '"')))
        assert imports == "False True"  # ours not imported; psycopg from the running environment
