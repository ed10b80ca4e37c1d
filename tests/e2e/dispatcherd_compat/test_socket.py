"""The local socket, both ways: dispatcherd's clients to our service, ours to dispatcherd's.

dispatcherd's socket broker sends newline-delimited messages cut in chunks of 1 kB; so a
task or a control request of a few kB arrives in chunks, and a large reply leaves in them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.control import control_with_reply
from dispatcher.publish import close_connections, submit_task
from support import dispatcherd
from support import dispatcherd_shapes as shapes
from support.dispatcherd import Dispatcherd, DispatcherdService, Driver
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90, func_only=True)]

StartService = Callable[..., ServiceProcess]
TASKS = "support.dispatcherd_tasks."


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path short enough for ``AF_UNIX`` (pytest's own folders may be too deep)."""
    folder = Path(tempfile.mkdtemp(prefix="dd-"))
    yield folder / "service.sock"
    shutil.rmtree(folder, ignore_errors=True)


def event_of(evidence: Evidence, event: str, label: str) -> bool:
    return any(r.get("event") == event and r.get("label") == label for r in evidence.records())


def test_dispatcherd_clients_over_our_socket(
    start_service: StartService,
    pg_dsn: str,
    channel: str,
    socket_path: Path,
    dispatcherd_env: Dispatcherd,
    tmp_path: Path,
    evidence: Evidence,
) -> None:
    config = {
        "version": 1,
        "brokers": {"socket": {"path": str(socket_path)}},
        "tasks": {"modules": ["support.dispatcherd_tasks_ours"]},
        "service": {"node_id": channel, "pool": {"min_workers": 1, "max_workers": 2}},
    }
    start_service(config)
    wait_until(socket_path.exists, 10)
    theirs = dispatcherd.write_config(
        tmp_path / "dispatcherd-socket.yml",
        {"version": 2, "brokers": {"socket": {"socket_path": str(socket_path)}}},
    )
    driver = Driver(dispatcherd_env, theirs, tmp_path / "driver.log")
    try:
        path, label = str(evidence.path), "S" * 9000
        sent = driver.call("publish", task="sleeper", method="apply_async", args=[path, 60, label])
        wait_until(lambda: event_of(evidence, "start", label), 10)
        assert driver.call("control_with_reply", command="alive") == [{"node_id": channel}]
        big_filter = {"args": [path, 60, label]}
        [running] = driver.call("control_with_reply", command="running", data=big_filter)
        [message] = shapes.check("running", running).values()
        assert (message["uuid"], message["args"]) == (sent["body"]["uuid"], [path, 60, label])
        [cancelled] = driver.call("control_with_reply", command="cancel", data=big_filter)
        assert len(shapes.body(cancelled)) == 1
        wait_until(lambda: event_of(evidence, "interrupted", label), 10)
    finally:
        driver.close()
    done = subprocess.run(
        [
            *dispatcherd_env.script("dispatcherctl"),
            "alive",
            "--config",
            str(theirs),
            "--log-level",
            "CRITICAL",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"node_id: {channel}" in done.stdout


@pytest.fixture
def our_socket_clients(socket_path: Path) -> Iterator[dict[str, Any]]:
    """Our clients in this process, configured with the socket alone."""
    config = {"version": 1, "brokers": {"socket": {"path": str(socket_path)}}}
    setup(config)
    yield config
    close_connections()
    reset()


@pytest.fixture
def their_socket_service(
    start_dispatcherd: Callable[[dict[str, Any]], DispatcherdService],
    pg_dsn: str,
    channel: str,
    socket_path: Path,
) -> DispatcherdService:
    """A dispatcherd service with a socket broker (beside pg_notify), node id ``dd-<channel>``."""
    document = dispatcherd.config(pg_dsn, [channel], node_id=f"dd-{channel}")
    document["brokers"]["socket"] = {"socket_path": str(socket_path)}
    service = start_dispatcherd(document)
    wait_until(socket_path.exists, 10)
    return service


def test_our_clients_over_dispatcherds_socket(
    their_socket_service: DispatcherdService,
    channel: str,
    our_socket_clients: dict[str, Any],
    tmp_path: Path,
    evidence: Evidence,
) -> None:
    path, large = str(evidence.path), "O" * 9000
    submit_task(TASKS + "record", args=[path, large])  # one line of 9 kB
    submit_task(TASKS + "sleeper", args=[path, 60, "small"], uuid="u-small")
    wait_until(lambda: event_of(evidence, "start", "small"), 10)
    wait_until(lambda: any(r.get("args") == [large] for r in evidence.records()), 10)
    assert control_with_reply("alive", timeout=10).replies == [{"node_id": f"dd-{channel}"}]
    [running] = control_with_reply("running", {"uuid": "u-small"}, timeout=10).replies
    assert [m["uuid"] for m in shapes.check("running", running).values()] == ["u-small"]
    [cancelled] = control_with_reply("cancel", {"uuid": "u-small"}, timeout=10).replies
    assert [m["uuid"] for m in shapes.body(cancelled).values()] == ["u-small"]
    wait_until(lambda: event_of(evidence, "interrupted", "small"), 10)

    config_file = tmp_path / "ours-socket.yml"
    config_file.write_text(json.dumps(our_socket_clients))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatcher.server.ctl",
            "alive",
            "--json",
            "--config",
            str(config_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == [{"node_id": f"dd-{channel}"}]


def test_our_client_reassembles_dispatcherds_chunked_socket_replies(
    their_socket_service: DispatcherdService, our_socket_clients: dict[str, Any], evidence: Evidence
) -> None:
    path, label = str(evidence.path), "O" * 9000
    submit_task(TASKS + "sleeper", args=[path, 60, label], uuid="u-socket")
    wait_until(lambda: event_of(evidence, "start", label), 10)
    big_filter = {"args": [path, 60, label]}  # the request: one line of 9 kB
    [running] = control_with_reply("running", big_filter, timeout=10).replies
    [message] = shapes.check("running", running).values()
    assert (message["uuid"], message["args"]) == ("u-socket", [path, 60, label])
    [cancelled] = control_with_reply("cancel", big_filter, timeout=10).replies
    assert [m["uuid"] for m in shapes.body(cancelled).values()] == ["u-socket"]
    wait_until(lambda: event_of(evidence, "interrupted", label), 10)
