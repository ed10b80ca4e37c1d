"""Signed messages and per-broker control allow-lists, against running services."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import reset, setup
from dispatcher.control import control_with_reply
from dispatcher.control.local import socket_request
from dispatcher.publish import close_connections, submit_task
from dispatcher.schema import sign
from support.service import Evidence, ServiceProcess
from support.service import task_message as message

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

KEY = {"id": "ops-1", "secret": "integration secret"}
SECURITY = {"keys": [KEY]}


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def client_config(pg_dsn: str, channel: str) -> Iterator[Callable[..., None]]:
    """Install a config in this process (the publisher and control client side)."""

    def install(security: dict[str, Any] | None = None, **brokers: Any) -> None:
        close_connections()
        pg_notify = {"conninfo": pg_dsn, "channels": [channel]}
        config: dict[str, Any] = {"version": 1, "brokers": {"pg_notify": pg_notify, **brokers}}
        if security is not None:
            config["security"] = security
        setup(config)

    yield install
    close_connections()
    reset()


def status(config: Path) -> dict[str, Any]:
    result = ctl(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    [reply] = json.loads(result.stdout)
    return reply  # type: ignore[no-any-return]


def test_required_control_signatures_refuse_raw_notify_and_accept_the_control_client(
    start_service: StartService,
    service_config: dict[str, Any],
    client_config: Callable[..., None],
    pg_conn: psycopg.Connection[Any],
    channel: str,
) -> None:
    service_config["security"] = {**SECURITY, "require_signed": ["control"]}
    service_config["service"]["node_id"] = "signed-node"
    service = start_service(service_config)
    # Any role that can connect can NOTIFY: an unsigned cancel-everything is refused.
    pg_conn.execute(f'LISTEN "{channel}_r1"')
    forged = {"control": "cancel", "reply_to": f"{channel}_r1", "control_data": {"all": True}}
    pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(forged)))
    [notify] = list(pg_conn.notifies(timeout=10, stop_after=1))
    assert json.loads(notify.payload) == {
        "error": "unsigned control message over pg_notify: this service requires control "
        "messages to be signed (security.require_signed)",
        "node_id": "signed-node",
    }
    service.wait_for_log(r"rejected message on channel .*: unsigned control message")
    # dispatcherctl signs with the key in its config: the same kind of command works.
    reply = status(service.config_path)
    assert reply["rejected"] == {"unsigned": 1}
    assert reply["signatures"]["keys"] == ["ops-1"]
    assert reply["signatures"]["require_signed"] == ["control"]
    # So does the control client API, and without the key it is refused.
    client_config(SECURITY)
    [alive] = control_with_reply("alive", expected_replies=1).replies
    assert alive == {"node_id": "signed-node"}
    client_config()
    [refused] = control_with_reply("alive", expected_replies=1).replies
    assert refused["error"].startswith("unsigned control message over pg_notify")


def test_tampered_and_replayed_control_messages_are_refused(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_conn: psycopg.Connection[Any],
    channel: str,
) -> None:
    service_config["security"] = {**SECURITY, "require_signed": ["control"]}
    service = start_service(service_config)
    reply_to = f"{channel}_r2"
    pg_conn.execute(f'LISTEN "{reply_to}"')

    def send_and_wait(payload: str) -> dict[str, Any]:
        pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        [notify] = list(pg_conn.notifies(timeout=10, stop_after=1))
        reply: dict[str, Any] = json.loads(notify.payload)
        return reply

    body = json.dumps({"control": "running", "reply_to": reply_to})
    signed = sign(body, KEY["id"], KEY["secret"].encode(), time.time())
    assert set(send_and_wait(signed)) == {"node_id"}  # nothing running
    assert send_and_wait(signed)["error"].startswith("replayed message: signature ")
    tampered = json.loads(signed)
    tampered["body"] = json.dumps(
        {"control": "cancel", "reply_to": reply_to, "control_data": {"all": True}}
    )
    assert send_and_wait(json.dumps(tampered))["error"] == "bad signature (key 'ops-1')"
    counted = status(service.config_path)["rejected"]
    assert counted == {"replayed": 1, "bad_signature": 1}
    service.wait_for_log(r"rejected message on channel .*: bad signature \(key 'ops-1'\)")


def test_a_signed_envelope_with_too_short_a_body_is_refused_saying_why(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_conn: psycopg.Connection[Any],
    channel: str,
) -> None:
    service_config["security"] = SECURITY
    service = start_service(service_config)
    envelope = json.loads(sign("1", KEY["id"], KEY["secret"].encode(), time.time()))
    pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(envelope)))
    service.wait_for_log(
        r"rejected message on channel .*: invalid signed envelope: body: '1' is not a valid "
        r"signed body: too short \(at least 2 characters\)$"
    )
    assert "The JSON text" not in service.log  # not the schema's description


def test_required_task_signatures_refuse_unsigned_tasks_and_run_signed_ones(
    start_service: StartService,
    service_config: dict[str, Any],
    client_config: Callable[..., None],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["security"] = {**SECURITY, "require_signed": ["task"]}
    service = start_service(service_config)
    notify(channel, message("record", evidence.path, "unsigned"))
    service.wait_for_log(r"rejected message on channel .*: unsigned task message over pg_notify")
    client_config(SECURITY)
    submit_task("support.service_tasks.record", args=[str(evidence.path), "signed"])
    [record] = evidence.wait_for(1)
    assert record["args"] == ["signed"]
    assert status(service.config_path)["rejected"] == {"unsigned": 1}


def test_required_task_signatures_refuse_an_unsigned_run_command_too(
    start_service: StartService,
    service_config: dict[str, Any],
    client_config: Callable[..., None],
    pg_conn: psycopg.Connection[Any],
    channel: str,
    evidence: Evidence,
) -> None:
    """``run`` submits the task it carries: unsigned, it would get round ``[task]``."""
    service_config["security"] = {**SECURITY, "require_signed": ["task"]}
    service_config["producers"] = {"control": {}}
    service = start_service(service_config)
    reply_to = f"{channel}_r3"
    pg_conn.execute(f'LISTEN "{reply_to}"')
    task = json.loads(message("record", evidence.path, "unsigned"))
    run = {"control": "run", "reply_to": reply_to, "control_data": task}
    pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(run)))
    [notify] = list(pg_conn.notifies(timeout=10, stop_after=1))
    assert json.loads(notify.payload)["error"] == (
        "unsigned run command over pg_notify: it submits a task, and this service requires "
        "task messages to be signed (security.require_signed)"
    )
    client_config(SECURITY)  # the control client signs
    signed = {**task, "args": [str(evidence.path), "signed"]}
    [ack] = control_with_reply("run", signed, expected_replies=1).replies
    assert "error" not in ack
    [record] = evidence.wait_for(1)
    assert record["args"] == ["signed"]
    assert status(service.config_path)["rejected"] == {"unsigned": 1}


def test_allow_control_restricts_pg_notify_but_not_the_socket_or_bound_tasks(
    start_service: StartService,
    service_config: dict[str, Any],
    client_config: Callable[..., None],
    notify: Notify,
    tmp_path: Path,
    channel: str,
    evidence: Evidence,
) -> None:
    socket_path = str(tmp_path / "dispatcher.sock")
    service_config["brokers"]["pg_notify"]["allow_control"] = ["alive", "status", "canel"]
    service_config["brokers"]["socket"] = {"path": socket_path}
    service_config["security"] = {**SECURITY, "require_signed": ["control"]}
    service = start_service(service_config)
    service.wait_for_log(r"brokers\.pg_notify\.allow_control in .*: 'canel' is not a control")
    client_config(SECURITY)  # pg_notify only
    [refused] = control_with_reply("cancel", {"uuid": "u-x"}, expected_replies=1).replies
    assert refused["error"] == (
        "control command 'cancel' is not allowed over pg_notify (brokers.pg_notify.allow_control)"
    )
    [allowed] = control_with_reply("alive", expected_replies=1).replies
    assert "error" not in allowed
    # Over the local socket (signed too: dispatcherctl and the client sign every message).
    client_config(SECURITY, socket={"path": socket_path})
    [over_socket] = control_with_reply("cancel", {"uuid": "u-x"}).replies
    assert set(over_socket) == {"node_id"}  # nothing to cancel
    unsigned_line = socket_request(socket_path, {"control": "alive", "reply_to": "x"}, timeout=5)
    assert unsigned_line is not None
    assert json.loads(unsigned_line)["error"].startswith("unsigned control message over socket")
    # A bound task's own control call is not subject to the allow-list.
    notify(
        channel,
        message("follow_up", evidence.path, "cancel", {"uuid": "u-x"}, bind=True),
    )
    [record] = evidence.wait_for(1)
    assert record["reply"] == {}  # nothing cancelled (a bound call's reply has no node_id)
    reply = status(service.config_path)
    assert reply["rejected"] == {"control_not_allowed": 1, "unsigned": 1}
