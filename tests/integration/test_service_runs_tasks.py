"""The service, run as a subprocess, runs registered tasks it receives over pg_notify."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.publish import batch, submit_task
from support.postgres import unique_channel
from support.service import Evidence, ServiceProcess

RECORD = "support.service_tasks.record"
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def task_message(path: Any, *args: Any, task: str = RECORD, **kwargs: Any) -> str:
    return json.dumps({"task": task, "args": [str(path), *args], "kwargs": kwargs})


def test_task_runs_with_its_arguments_in_a_worker_process(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, task_message(evidence.path, 1, "two", three=3))
    [record] = evidence.wait_for(1)
    assert record["args"] == [1, "two"]
    assert record["kwargs"] == {"three": 3}
    assert record["pid"] != service.pid
    assert record["pid"] in _descendants(service)


def _descendants(service: ServiceProcess) -> set[int]:
    from support.service import children

    return children(service.pid)


def test_tasks_from_the_sdk_and_from_psql(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    channel: str,
    evidence: Evidence,
    pg_dsn: str,
) -> None:
    start_service(service_config)
    submit_task(RECORD, args=[str(evidence.path), "sdk"])
    subprocess.run(
        [
            "psql",
            pg_dsn,
            "-q",
            "-c",
            f"SELECT pg_notify('{channel}', '{task_message(evidence.path, 'psql')}')",
        ],
        check=True,
    )
    records = evidence.wait_for(2)
    assert sorted(r["args"][0] for r in records) == ["psql", "sdk"]


def test_three_channels_run_an_unlistened_one_does_not(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    evidence: Evidence,
) -> None:
    channels = [unique_channel() for _ in range(3)]
    service_config["brokers"]["pg_notify"]["channels"] = channels
    start_service(service_config)
    notify(unique_channel(), task_message(evidence.path, "nobody listens"))
    for name in channels:
        notify(name, task_message(evidence.path, name))
    records = evidence.wait_for(3)
    assert sorted(r["args"][0] for r in records) == sorted(channels)
    with pytest.raises(AssertionError):
        evidence.wait_for(4, timeout=0.5)


def test_thousand_tasks_on_two_workers_run_exactly_once(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = start_service(service_config)
    with batch():
        for n in range(1000):
            submit_task(RECORD, args=[str(evidence.path), n])
    records = evidence.wait_for(1000, timeout=60)
    assert sorted(r["args"][0] for r in records) == list(range(1000))
    assert len({r["pid"] for r in records}) == 2
    # One line per finished task (service.task_log: end), else one per lifecycle event:
    # none per queued message.
    service.wait_for_log(r"\) finished ok in ", count=1000)
    others = [line for line in service.log.splitlines() if ") finished ok in " not in line]
    assert len(others) < 15, others


def test_async_task_runs(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    notify(channel, task_message(evidence.path, 42, task="support.service_tasks.async_record"))
    [record] = evidence.wait_for(1)
    assert record == {**record, "args": [42], "kind": "async"}


def test_failing_task_is_logged_and_the_worker_lives_on(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    failing_uuid = str(uuid.uuid4())
    notify(
        channel,
        json.dumps(
            {
                "task": "support.service_tasks.fail",
                "uuid": failing_uuid,
                "args": [str(evidence.path)],
            }
        ),
    )
    notify(channel, task_message(evidence.path, "after"))
    failed, after = evidence.wait_for(2)
    assert failed["pid"] == after["pid"]
    [line] = service.wait_for_log(r"ERROR .*support\.service_tasks\.fail")
    assert failing_uuid in line
    assert "ValueError: this task always fails" in service.log


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            json.dumps({"task": "os.system", "args": ["echo pwned"], "uuid": "u-unknown"}),
            r"\(uuid u-unknown\): task 'os\.system' is not registered",
        ),
        ('{"task": "support.service_tasks.record", ', r"not JSON"),
        ("[1, 2, 3]", r"a JSON array, not an object"),
        (
            json.dumps({"task": RECORD, "timeout": "soon", "uuid": "u-bad"}),
            r"\(uuid u-bad\): timeout: expected number, got string 'soon'",
        ),
        ("lambda: __import__('os').system('echo pwned')", r"not JSON"),
    ],
    ids=["unregistered task", "malformed JSON", "JSON array", "schema-invalid", "lambda string"],
)
def test_bad_payload_is_rejected_and_the_next_task_runs(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    payload: str,
    reason: str,
) -> None:
    service = start_service(service_config)
    notify(channel, payload)
    notify(channel, task_message(evidence.path, "still serving"))
    [record] = evidence.wait_for(1)
    assert record["args"] == ["still serving"]
    service.wait_for_log(r"WARNING .*rejected message on channel " + channel + r".*" + reason)
    assert len(service.wait_for_log("rejected message")) == 1


def test_200_kb_of_garbage_in_chunks_is_rejected(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    from dispatcher.publish import split_message

    service = start_service(service_config)
    garbage = "".join(chr(33 + (n * 7919) % 90) for n in range(200_000))
    for envelope in split_message(garbage):
        notify(channel, envelope)
    notify(channel, task_message(evidence.path, "still serving"))
    evidence.wait_for(1)
    service.wait_for_log(r"rejected message on channel .*: not JSON")


def dispatcherd_body(path: Any, *args: Any) -> str:
    """A message as dispatcherd 2026.5.27's submit_task builds it (json.dumps defaults)."""
    body = {
        "uuid": str(uuid.uuid4()),
        "args": [str(path), *args],
        "task": RECORD,
        "time_pub": 1764360000.5126922,
        "timeout": 5,
        "on_duplicate": "serial",
    }
    return json.dumps(body)


def dispatcherd_chunks(message: str, max_bytes: int = 7999) -> list[str]:
    """Chunk envelopes as dispatcherd cuts them (``separators=(',', ':')``)."""
    message_id = uuid.uuid4().hex
    size = max_bytes - 200
    parts = [message[i : i + size] for i in range(0, len(message), size)]
    return [
        json.dumps(
            {
                "__dispatcherd_chunk__": "v1",
                "message_id": message_id,
                "index": n,
                "total": len(parts),
                "payload": part,
            },
            separators=(",", ":"),
        )
        for n, part in enumerate(parts)
    ]


def test_dispatcherd_messages_run_unchanged(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    notify(channel, dispatcherd_body(evidence.path, "small"))
    big = "b" * 30_000
    envelopes = dispatcherd_chunks(dispatcherd_body(evidence.path, big))
    assert len(envelopes) > 3
    for envelope in reversed(envelopes):  # out of order, too
        notify(channel, envelope)
    records = evidence.wait_for(2)
    assert sorted(len(r["args"][0]) for r in records) == [5, 30_000]


def test_incomplete_chunked_message_expires_and_late_slices_never_run(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    from dispatcher.publish import split_message

    service_config["service"]["chunk_expiry"] = 0.5
    service = start_service(service_config)
    first, *rest = split_message(task_message(evidence.path, "z" * 10_000), message_id="partial-1")
    notify(channel, first)
    service.wait_for_log(r"incomplete chunked message partial-1 expired", timeout=5)
    for envelope in rest:
        notify(channel, envelope)
    notify(channel, task_message(evidence.path, "after"))
    assert [r["args"] for r in evidence.wait_for(1)] == [["after"]]
    with pytest.raises(AssertionError):
        evidence.wait_for(2, timeout=0.5)


def libpq_environment(dsn: str) -> dict[str, str]:
    """The ``PG*`` variables that lead libpq to the database of *dsn*."""
    from psycopg.conninfo import conninfo_to_dict

    names = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER"}
    params = conninfo_to_dict(dsn)
    return {names[key]: str(params[key]) for key in names if params.get(key)}


def test_an_empty_conninfo_takes_the_database_from_libpqs_environment_and_names_it(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    pg_dsn: str,
) -> None:
    # An empty conninfo was refused ("too short"), and the log named "PostgreSQL at the
    # local socket" for a conninfo without a host, whatever $PGHOST said.
    environment = libpq_environment(pg_dsn)
    service_config["brokers"]["pg_notify"]["conninfo"] = ""
    service = start_service(service_config, env=environment)
    notify(channel, task_message(evidence.path, "from the environment"))
    assert evidence.wait_for(1)[0]["args"] == ["from the environment"]
    host = environment.get("PGHOST", "the local socket")
    [line] = service.wait_for_log("listening on channels")
    assert f"(PostgreSQL at {host}, " in line
    assert f"database {environment['PGDATABASE']!r}" in line
