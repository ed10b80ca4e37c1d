"""Control messages and replies too large for one NOTIFY or one socket line: chunk envelopes.

Over pg_notify, a control message over 8 kB goes in chunk envelopes, as a task message does.
Over the local socket, a request or a reply over 1 kB goes in chunk envelopes of at most
1 kB, one per line (dispatcherd's socket format), and the reply comes back on the request's
own connection, never through the database.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import Settings, reset, setup
from dispatcher.control import control_with_reply, entries
from dispatcher.publish import close_connections, submit_task
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, validator
from dispatcher.schema.chunks import SOCKET_CHUNK_BYTES, ChunkAssembler, socket_lines
from support.service import Evidence, ServiceProcess
from support.service import task_message as message

TASKS = "support.service_tasks."
StartService = Callable[..., ServiceProcess]
ENVELOPE = validator("chunk-envelope")


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def joined(payloads: list[str]) -> dict[str, list[str]]:
    """The chunk envelopes among *payloads*, by message id."""
    messages: dict[str, list[str]] = {}
    for payload in payloads:
        envelope = json.loads(payload)
        if "__dispatcherd_chunk__" in envelope:
            messages.setdefault(envelope["message_id"], []).append(payload)
    return messages


def test_a_control_message_over_8_kB_over_pg_notify_gets_its_reply(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    listener: psycopg.Connection[Any],
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    label = "L" * 20_000
    args = [str(evidence.path), 30, label]
    submit_task(TASKS + "sleep_recording_cancel", args=args, uuid="u-big")
    evidence.wait_for(1)
    listing = ctl(service.config_path, "running", "--args", json.dumps(args), "--json")
    assert listing.returncode == 0, listing.stderr
    [running] = json.loads(listing.stdout)
    assert [task["uuid"] for task in entries(running).values()] == ["u-big"]
    list(listener.notifies(timeout=0.5))  # the task's envelopes and the listing's: seen

    [cancelled] = control_with_reply("cancel", {"args": args}, expected_replies=1).replies
    assert [task["uuid"] for task in entries(cancelled).values()] == ["u-big"]
    assert evidence.wait_for(2)[1]["event"] == "cancelled"
    # The request went in chunk envelopes, each a NOTIFY PostgreSQL accepts.
    sent = [notify.payload for notify in listener.notifies(timeout=0.5)]
    [envelopes] = joined(sent).values()
    assert len(envelopes) > 2
    assert all(len(e.encode()) <= MAX_NOTIFY_PAYLOAD_BYTES for e in envelopes)
    assert all(ENVELOPE.is_valid(json.loads(e)) for e in envelopes)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path short enough for ``AF_UNIX`` (pytest's own folders may be too deep)."""
    folder = Path(tempfile.mkdtemp(prefix="dc-"))
    yield folder / "d.sock"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def socket_service(
    start_service: StartService, service_config: dict[str, Any], socket_path: Path
) -> ServiceProcess:
    service_config["brokers"]["socket"] = {"path": str(socket_path)}
    service_config["service"]["node_id"] = "socket-node"
    service = start_service(service_config)
    service.wait_for_log(r"listening on socket")
    return service


def send_lines(path: Path, lines: list[str]) -> None:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall("".join(line + "\n" for line in lines).encode())


def exchange(path: Path, lines: list[str], timeout: float = 10) -> list[str]:
    """Send *lines* over one connection; return the lines received until a reply is whole."""
    assembler = ChunkAssembler()
    received: list[str] = []
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall("".join(line + "\n" for line in lines).encode())
        pending = b""
        while True:
            client.settimeout(max(0.01, deadline - time.monotonic()))
            data = client.recv(1 << 16)
            assert data, f"the connection closed after {received}"
            pending += data
            *complete, rest = pending.split(b"\n")
            pending = rest
            for line in complete:
                received.append(line.decode())
                decoded = json.loads(line)
                if "__dispatcherd_chunk__" not in decoded or assembler.add(decoded) is not None:
                    return received


def test_a_request_in_socket_chunks_is_answered_on_its_connection_in_socket_chunks(
    socket_service: ServiceProcess,
    socket_path: Path,
    pg_conn: psycopg.Connection[Any],
    evidence: Evidence,
) -> None:
    args = [str(evidence.path), 30, "S" * 6000]
    send_lines(socket_path, socket_lines(message("sleep_recording_cancel", *args, uuid="u-s")))
    evidence.wait_for(1)
    reply_to = f"reply_to_{uuid.uuid4().hex}"
    pg_conn.execute(f'LISTEN "{reply_to}"')
    request = {"control": "running", "reply_to": reply_to, "control_data": {"args": args}}
    lines = socket_lines(json.dumps(request))
    assert len(lines) > 5

    received = exchange(socket_path, lines)
    assert len(received) > 5
    assert all(len(line.encode()) <= SOCKET_CHUNK_BYTES for line in received)
    assembler = ChunkAssembler()
    [*pending, whole] = [assembler.add(json.loads(line)) for line in received]
    assert pending == [None] * len(pending)
    assert whole is not None
    reply = json.loads(whole)
    assert reply["node_id"] == "socket-node"
    [task] = entries(reply).values()
    assert (task["uuid"], task["args"]) == ("u-s", args)
    assert list(pg_conn.notifies(timeout=1)) == []  # nothing through the database


@pytest.fixture
def socket_clients(socket_path: Path) -> Iterator[Settings]:
    """Our clients in this process, with the socket alone."""
    yield setup({"version": 1, "brokers": {"socket": {"path": str(socket_path)}}})
    close_connections()
    reset()


def test_our_client_joins_a_chunked_socket_reply(
    socket_service: ServiceProcess,
    socket_path: Path,
    socket_clients: Settings,
    tmp_path: Path,
    evidence: Evidence,
) -> None:
    label = "C" * 20_000
    args = [str(evidence.path), 30, label]
    submit_task(TASKS + "sleep_recording_cancel", args=args, uuid="u-c")
    evidence.wait_for(1)
    result = control_with_reply("running", {"args": args}, timeout=10)
    assert result.skipped == []
    [reply] = result.replies
    [task] = entries(reply).values()
    assert (task["uuid"], task["args"]) == ("u-c", args)

    config = tmp_path / "socket-client.json"
    config.write_text(json.dumps({"version": 1, "brokers": {"socket": {"path": str(socket_path)}}}))
    listing = ctl(config, "status", "--json")
    assert (listing.returncode, listing.stderr) == (0, "")
    [status] = json.loads(listing.stdout)
    assert status["node_id"] == "socket-node"
    assert label in json.dumps(status)  # the status reply lists the task: several kB, joined
