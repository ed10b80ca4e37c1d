"""The Prometheus endpoint: valid text format, counters that match what ran, bad requests."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.config import Settings
from dispatcher.control import control_with_reply, entries
from support.log_lines import assert_every_line_is_ours
from support.metrics import free_port, probe
from support.proxy import DatabaseProxy
from support.service import Evidence, ServiceProcess, wait_until
from support.service import task_message as message

TASKS = "support.service_tasks."
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        return client.recv(65536)


@pytest.fixture
def metrics_service(
    start_service: StartService, service_config: dict[str, Any]
) -> tuple[ServiceProcess, int]:
    port = free_port()
    service_config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
    service = start_service(service_config)
    service.wait_for_log(r"serving metrics on")
    return service, port


def test_metrics_count_what_ran(
    metrics_service: tuple[ServiceProcess, int], notify: Notify, channel: str, evidence: Evidence
) -> None:
    _, port = metrics_service
    for n in range(3):
        notify(channel, message("record", evidence.path, n))
    notify(channel, message("fail", evidence.path))
    notify(channel, "not json")
    evidence.wait_for(4)

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        # A worker reports a task finished after the task wrote its evidence: wait for
        # every report, then check the rest.
        found = samples(port)
        failed = (
            "dispatcher_tasks_finished_total",
            (("outcome", "error"), ("task", TASKS + "fail")),
        )
        ok = ("dispatcher_tasks_finished_total", (("outcome", "ok"), ("task", TASKS + "record")))
        return found if found.get(failed) == 1 and found.get(ok) == 3 else {}

    found = wait_until(settled, timeout=5)
    assert (
        found[("dispatcher_tasks_finished_total", (("outcome", "ok"), ("task", TASKS + "record")))]
        == 3
    )
    assert found[("dispatcher_messages_received_total", ())] == 4
    assert found[("dispatcher_messages_rejected_total", (("reason", "not_json"),))] == 1
    assert found[("dispatcher_run_time_seconds_count", (("task", TASKS + "record"),))] == 3
    assert found[("dispatcher_workers", (("status", "ready"),))] >= 1
    assert found[("dispatcher_queue_length", ())] == 0
    workers = sum(v for (name, _), v in found.items() if name == "dispatcher_workers")
    assert found[("dispatcher_worker_count_total", ())] == workers  # dispatcherd's names
    assert found[("dispatcher_control_messages_count_total", ())] == 0


REJECTION_REASONS = {
    "not_json",
    "too_deep",
    "not_object",
    "invalid_message",
    "invalid_chunk",
    "oversized",
    "chunk_expired",
    "chunk_evicted",
    "unknown_task",
    "invalid_control",
    "control_not_allowed",
    "control_unsupported",
    "overloaded",
    "internal_error",
    "unsigned",
    "replayed",
    "invalid_signed_envelope",
    "unknown_key",
    "bad_signature",
    "stale_signature",
}
"""The reasons docs/service.md and docs/control.md name."""

OUTCOMES = {"ok", "error", "cancelled", "timeout", "killed", "worker_lost", "memory_exceeded"}


def test_counters_by_reason_and_by_task_are_exported_at_zero_from_the_start(
    metrics_service: tuple[ServiceProcess, int],
) -> None:
    """An alert on increase() sees the first event after a start: the series exists before."""
    _, port = metrics_service
    found = samples(port)
    rejected = {
        dict(labels)["reason"]: value
        for (name, labels), value in found.items()
        if name == "dispatcher_messages_rejected_total"
    }
    assert rejected == dict.fromkeys(REJECTION_REASONS, 0)
    finished = {
        (dict(labels)["task"], dict(labels)["outcome"]): value
        for (name, labels), value in found.items()
        if name == "dispatcher_tasks_finished_total"
    }
    assert finished[TASKS + "fail", "error"] == 0
    assert finished[TASKS + "record", "timeout"] == 0
    # The failures, which alerts watch; not ok nor cancelled (asked for) until they happen.
    assert {outcome for _, outcome in finished} == OUTCOMES - {"ok", "cancelled"}
    assert all(task.startswith(TASKS) for task, _ in finished)  # the registered ones only
    assert set(finished.values()) == {0}


def test_tasks_ended_with_their_worker_are_timed_like_the_others(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    configured: Settings,
) -> None:
    """A task whose worker dies, or is killed after its timeout or a cancel, started: it is
    in the queue wait and run time histograms as often as it is in the finished counter."""
    port = free_port()
    service_config["service"].update(
        cancel_grace=0.5,
        pool={"min_workers": 3, "max_workers": 3},
        metrics={"host": "127.0.0.1", "port": port},
    )
    start_service(service_config)
    now = time.time()
    notify(channel, message("die", evidence.path, time_pub=now))
    notify(channel, message("stubborn_sleep", evidence.path, 30, timeout=0.2, time_pub=now))
    notify(channel, message("stubborn_sleep", evidence.path, 30, uuid="u-c", time_pub=now))
    evidence.wait_for(3)
    [reply] = control_with_reply("cancel", {"uuid": "u-c"}, expected_replies=1).replies
    assert list(entries(reply).values())

    def ended() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = samples(port)
        counted = [
            found.get(("dispatcher_tasks_finished_total", (("outcome", o), ("task", TASKS + t))))
            for t, o in (("die", "worker_lost"), ("stubborn_sleep", "killed"))
        ] + [
            found.get(
                (
                    "dispatcher_tasks_finished_total",
                    (("outcome", "cancelled"), ("task", TASKS + "stubborn_sleep")),
                )
            )
        ]
        return found if counted == [1, 1, 1] else {}

    found = wait_until(ended, timeout=15)
    for task, runs in (("die", 1), ("stubborn_sleep", 2)):
        labels = (("task", TASKS + task),)
        assert found[("dispatcher_run_time_seconds_count", labels)] == runs
        assert found[("dispatcher_queue_wait_seconds_count", labels)] == runs
    # The killed one ran its timeout and the cancel grace at least.
    assert found[("dispatcher_run_time_seconds_sum", (("task", TASKS + "stubborn_sleep"),))] > 0.7


def test_a_step_of_the_wall_clock_under_a_task_changes_neither_its_run_time_nor_its_log(
    metrics_service: tuple[ServiceProcess, int], notify: Notify, channel: str, evidence: Evidence
) -> None:
    service, port = metrics_service
    task = TASKS + "step_wall_clock"
    ended = rf"task {task} \(uuid [^)]*\) finished ok in (-?[0-9.]+) ms"
    for count, step in enumerate((-3600.0, 3600.0), 1):
        sent = message("step_wall_clock", evidence.path, step, 0.3, time_pub=time.time())
        notify(channel, sent)
        lines = service.wait_for_log(ended, count=count)
    durations = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in lines]
    assert all(300 <= ms < 10_000 for ms in durations), durations
    labels = (("task", task),)

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = samples(port)
        return found if found.get(("dispatcher_run_time_seconds_count", labels)) == 2 else {}

    found = wait_until(settled, timeout=5)
    assert 0.6 <= found[("dispatcher_run_time_seconds_sum", labels)] < 20
    assert found[("dispatcher_run_time_seconds_bucket", (("le", "0.1"), *labels))] == 0
    # Its queue wait is measured on the wall clock (from its time_pub, the publisher's),
    # never below 0: the second may have started on the worker whose clock went back.
    assert found[("dispatcher_queue_wait_seconds_count", labels)] == 2
    assert 0 <= found[("dispatcher_queue_wait_seconds_sum", labels)] < 60


def test_bad_requests_get_errors_and_the_service_keeps_serving(
    metrics_service: tuple[ServiceProcess, int], notify: Notify, channel: str, evidence: Evidence
) -> None:
    _, port = metrics_service
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    assert caught.value.code == 404
    caught.value.close()
    assert raw_request(port, b"\xff\xfe garbage\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request")
    refused = raw_request(port, b"POST /metrics HTTP/1.1\r\n\r\n").partition(b"\r\n\r\n")[0]
    assert refused.startswith(b"HTTP/1.1 405")
    assert b"\r\nAllow: GET, HEAD\r\n" in refused + b"\r\n"  # as HTTP requires with a 405
    # The absolute form of the target, as a proxy sends it, is the same resource.
    absolute = f"GET http://127.0.0.1:{port}/metrics HTTP/1.1\r\n\r\n".encode()
    assert raw_request(port, absolute).startswith(b"HTTP/1.1 200")
    absolute = f"GET http://127.0.0.1:{port}/other HTTP/1.1\r\n\r\n".encode()
    assert raw_request(port, absolute).startswith(b"HTTP/1.1 404")
    # HEAD: GET's headers, its Content-Length included, and no body.
    head, _, body = raw_request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    [length] = [line for line in head.split(b"\r\n") if line.startswith(b"Content-Length: ")]
    assert int(length.removeprefix(b"Content-Length: ")) > 1000
    assert body == b""
    notify(channel, message("record", evidence.path, "still serving"))
    evidence.wait_for(1)
    assert samples(port)[("dispatcher_messages_received_total", ())] == 1


def answers(port: int) -> bool:
    """Whether ``GET /metrics`` gets its 200 now."""
    try:
        return raw_request(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_running_out_of_file_descriptors_costs_connections_not_the_service(
    metrics_service: tuple[ServiceProcess, int], notify: Notify, channel: str, evidence: Evidence
) -> None:
    service, port = metrics_service
    _, hard = resource.prlimit(service.pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{service.pid}/fd"))
    resource.prlimit(service.pid, resource.RLIMIT_NOFILE, (in_use + 10, hard))
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    try:
        service.wait_for_log(
            r"WARNING dispatcher\.metrics: the metrics server cannot accept a connection: "
            r"Too many open files \(EMFILE\); pausing 0\.5 s"
        )
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: answers(port), timeout=10)
    notify(channel, message("record", evidence.path, "still serving"))
    evidence.wait_for(1)
    assert service.process is not None
    assert service.process.poll() is None
    assert "Traceback" not in service.log
    assert_every_line_is_ours(service.log)


def test_connections_past_the_cap_wait_for_a_free_place(
    metrics_service: tuple[ServiceProcess, int],
) -> None:
    service, port = metrics_service
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as late:
            late.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            with pytest.raises(TimeoutError):  # not accepted while 64 are open
                late.recv(65536)
            idle.pop().close()
            late.settimeout(10)
            assert late.recv(65536).startswith(b"HTTP/1.1 200 OK")
    finally:
        for client in idle:
            client.close()
    service.wait_for_log(
        r"WARNING dispatcher\.metrics: the metrics server serves 64 connections, the most it "
        r"serves at once: new ones wait"
    )


@pytest.mark.parametrize("taken", ["metrics port", "socket path"])
def test_an_address_another_process_holds_stops_the_start(
    start_service: StartService,
    service_config: dict[str, Any],
    tmp_path: Any,
    evidence: Evidence,
    taken: str,
) -> None:
    """Exit 2 saying why, rather than run on while Prometheus (or dispatcherctl) reaches
    another process there; and nothing runs (not even ``producers.on_start``)."""
    on_start = {"args": [str(evidence.path), "on start"]}
    service_config["producers"] = {"on_start": {TASKS + "record": on_start}}
    if taken == "metrics port":
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        service_config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
        said = (
            rf"cannot start: cannot serve metrics on 127\.0\.0\.1:{port}: .*address already in use"
            r"; another process holds the port \(is this service already running\?\): stop it, "
            r"or choose another service\.metrics\.port"
        )
    else:
        holder = socket.socket(socket.AF_UNIX)
        path = tmp_path / "taken.sock"
        holder.bind(str(path))
        service_config["brokers"]["socket"] = {"path": str(path)}
        said = rf"cannot start: cannot listen on socket {path}: another running service uses it"
    with holder:
        holder.listen()
        service = start_service(service_config, wait=False)
        assert service.wait(60) == 2, service.log
    service.wait_for_log(rf"CRITICAL dispatcher\.service: (?i:{said})")
    assert "Traceback" not in service.log
    assert_every_line_is_ours(service.log)
    assert evidence.records() == []


def test_a_broker_that_fails_is_shown_in_status_and_metrics_until_it_serves_again(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    """The pg_notify listener cannot reach the database: `status` says since when and why,
    ``dispatcher_broker_up`` is 0 (the socket broker's 1); once it listens, both say so."""
    proxy = DatabaseProxy(pg_dsn)
    port = free_port()
    socket_path = tmp_path / "dispatcher.sock"
    service_config["brokers"]["pg_notify"]["conninfo"] = proxy.dsn
    service_config["brokers"]["socket"] = {"path": str(socket_path)}
    service_config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
    service = start_service(service_config, wait=False, log_level="DEBUG")  # (the repeats)
    service.wait_for_log(r"pg_notify connection to .* failed", count=2)
    ctl_config = tmp_path / "ctl.yml"
    ctl_config.write_text(
        json.dumps({"version": 1, "brokers": {"socket": {"path": str(socket_path)}}})
    )

    def brokers() -> dict[str, Any]:
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher.server.ctl",
                "status",
                "--json",
                "--config",
                str(ctl_config),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if status.returncode != 0:
            return {}
        [reply] = json.loads(status.stdout)
        return dict(reply["brokers"])

    health = wait_until(lambda: (found := brokers()) and found, 20)
    assert set(health) == {"pg_notify", "socket"}, health
    assert health["pg_notify"]["serving"] is False
    assert health["pg_notify"]["failing_since"] <= time.time()
    assert health["pg_notify"]["failures"] >= 2
    assert health["pg_notify"]["last_error"]
    assert health["socket"] == {
        "serving": True,
        "failing_since": None,
        "last_error": None,
        "failures": 0,
    }
    up = wait_until(lambda: samples(port), 20)
    assert up[("dispatcher_broker_up", (("broker", "pg_notify"),))] == 0
    assert up[("dispatcher_broker_up", (("broker", "socket"),))] == 1
    assert up[("dispatcher_broker_failures_total", (("broker", "pg_notify"),))] >= 2

    proxy.up()
    try:
        service.wait_for_log(r"listening on channels", timeout=40)
        health = brokers()
        assert (health["pg_notify"]["serving"], health["pg_notify"]["failing_since"]) == (
            True,
            None,
        )
        assert health["pg_notify"]["last_error"]  # kept, for the record
        assert samples(port)[("dispatcher_broker_up", (("broker", "pg_notify"),))] == 1
    finally:
        proxy.down()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_an_ipv6_host_is_bracketed_wherever_the_url_is_shown(
    start_service: StartService, service_config: dict[str, Any], configured: Settings
) -> None:
    service_config["service"]["metrics"] = {"host": "::1", "port": 0}
    service = start_service(service_config)
    [line] = service.wait_for_log(r"serving metrics on http://\S+/metrics")
    url = re.search(r"http://\S+/metrics", line)
    assert url is not None
    assert re.fullmatch(r"http://\[::1\]:\d+/metrics", url[0]), line
    with urllib.request.urlopen(url[0], timeout=5) as response:  # the URL works as written
        assert b"dispatcher_workers" in response.read()
    [reply] = control_with_reply("metrics", expected_replies=1).replies
    assert reply["url"] == url[0]
    config = str(service.config_path)
    shown = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", "metrics", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"url: {url[0]}\n" in shown.stdout


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_the_ipv6_any_address_serves_ipv4_clients_too(
    start_service: StartService, service_config: dict[str, Any]
) -> None:
    # host "::" bound IPv6 only (anyio sets IPV6_V6ONLY): a Prometheus on an IPv4 pod
    # network could not scrape it.
    port = free_port()
    service_config["service"]["metrics"] = {"host": "::", "port": port}
    service = start_service(service_config)
    service.wait_for_log(rf"serving metrics on http://\[::\]:{port}/metrics")
    for url in (f"http://127.0.0.1:{port}/metrics", f"http://[::1]:{port}/metrics"):
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"dispatcher_workers" in response.read()


def test_probes_tell_ready_from_alive(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_dsn: str,
    tmp_path: Path,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    # While the database could not be reached, /metrics answered 200 and there was no
    # other path: a readiness probe could not tell a service that serves from one that
    # cannot (dispatcherctl alive and status exited 0 too).
    proxy = DatabaseProxy(pg_dsn)
    port = free_port()
    service_config["brokers"]["pg_notify"]["conninfo"] = proxy.dsn
    service_config["brokers"]["socket"] = {"path": str(tmp_path / "dispatcher.sock")}
    service_config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
    service = start_service(service_config, wait=False)
    service.wait_for_log(r"pg_notify connection to .* failed")
    service.wait_for_log(r"serving metrics on")
    assert probe(port, "/livez") == (200, "alive\n")
    failing = "not ready: the pg_notify broker is not serving (since "

    def failing_broker() -> tuple[int, str] | None:  # (the service may be starting still)
        answer = probe(port, "/readyz")
        return answer if answer[1].startswith(failing) else None

    status, body = wait_until(failing_broker, 20)
    assert status == 503
    # Only which broker and since when: its error (the database's host, port, role) goes
    # to status and the log, not to any client of the port.
    assert re.fullmatch(re.escape(failing) + r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)\n", body), body
    assert "socket" not in body  # it serves
    assert "Connection refused" in service.log

    proxy.up()
    try:
        service.wait_for_log(r"listening on channels", timeout=40)
        assert wait_until(lambda: probe(port, "/readyz") == (200, "ready\n"), 20)
        notify(channel, message(TASKS + "sleep_then_record", str(evidence.path), 3))
        evidence.wait_for(1)  # started: the stop waits for it
        service.signal(signal.SIGTERM)
        assert wait_until(lambda: probe(port, "/readyz")[0] == 503, 20)
        assert probe(port, "/readyz") == (503, "not ready: the service is stopping\n")
        assert probe(port, "/livez") == (200, "alive\n")
        assert service.wait() == 0
    finally:
        proxy.down()
