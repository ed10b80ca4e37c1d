"""The service under resource limits: threads, processes, file descriptors running short.

Shortages are injected into the service subprocess (see ``support/faults``): no thread can
start for a while, the fork server cannot fork, a low ``RLIMIT_NOFILE``. The service must
say what ran short, wait, and serve again once it is over, never stop listening for good.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dispatcher.server.library_logs import OwnCancellations, quiet_own_cancellations
from support.durable import enqueue, job_message, migrated, wait_for_states
from support.faults import fault_env
from support.log_lines import logged_at
from support.metrics import free_port
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess
from support.service import task_message as message

pytestmark = pytest.mark.timeout(60)

RECORD = "support.service_tasks.record"
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]
Conn = psycopg.Connection[Any]


def test_brokers_outlive_a_shortage_of_threads_at_start(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_dsn: str,
    pg_conn: Conn,
    channel: str,
    notify: Notify,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    """No thread for the host name's lookup: each broker that needs one (and the metrics
    server) says so, tries again, and serves once threads can start again, as after a
    database outage; the socket, bound in the event loop's thread, needs none."""
    schema = migrated(pg_conn, unique_schema())
    # A host name, not an address: psycopg looks it up in a thread.
    conninfo = make_conninfo(pg_dsn, host="localhost")
    brokers = service_config["brokers"]
    brokers["pg_notify"]["conninfo"] = conninfo
    brokers["pg_queue"] = {"conninfo": conninfo, "schema": schema, "queues": [channel + "_q"]}
    brokers["socket"] = {"path": str(tmp_path / "service.sock")}
    service_config["service"]["metrics"] = {"host": "localhost", "port": free_port()}
    threads_back = tmp_path / "threads-back"
    env = fault_env(no_threads=str(threads_back))
    service = start_service(service_config, wait=False, env=env)
    service.wait_for_log(r"pg_notify.*can't start new thread")
    service.wait_for_log(r"pg_queue.*(can't start new thread|TaskGroup)")
    service.wait_for_log(r"metrics.*can't start new thread")
    threads_back.touch()
    service.wait_for_log(r"listening on channels")
    service.wait_for_log(r"listening on socket")
    service.wait_for_log(r"serving metrics on")
    notify(channel, message(RECORD, evidence.path, "over pg_notify"))
    uuids = enqueue(pg_conn, schema, channel + "_q", [job_message("record", evidence.path, "q")])
    wait_for_states(pg_conn, schema, uuids, {"done"})
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(tmp_path / "service.sock"))
        client.sendall((message(RECORD, evidence.path, "over the socket") + "\n").encode())
    records = evidence.wait_for(3)
    assert sorted(str(r["args"][0]) for r in records) == ["over pg_notify", "over the socket", "q"]
    assert service.stop() == 0
    assert not re.search(r"broker stopped|Traceback", service.log), service.log


def soft_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files limit")


def sixteen_workers(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    config["service"]["pool"] = {"min_workers": 16, "max_workers": 16}
    config["brokers"]["socket"] = {"path": str(tmp_path / "service.sock")}
    return config


def test_too_few_file_descriptors_for_the_pool_cost_workers_not_the_service(
    start_service: StartService,
    service_config: dict[str, Any],
    channel: str,
    notify: Notify,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    """A hard limit of 40 for 16 workers: said at start, and the workers that find no file
    descriptor left fail to start (each a line, with a pause), but the service serves."""
    config = sixteen_workers(service_config, tmp_path)
    service = start_service(config, wait=False, env=fault_env(nofile="40:40"))
    service.wait_for_log(r"WARNING .*file-descriptor limit \(RLIMIT_NOFILE, ulimit -n\) is 40")
    service.wait_for_log(r"could not start worker \d+: .*out of file descriptors")
    service.wait_ready()
    notify(channel, message(RECORD, evidence.path, "served"))
    assert evidence.wait_for(1)[0]["args"] == ["served"]
    assert service.stop() == 0
    assert not re.search(r"Traceback|IndexError|CRITICAL", service.log), service.log


def test_a_soft_file_descriptor_limit_too_low_for_the_pool_is_raised(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path
) -> None:
    config = sixteen_workers(service_config, tmp_path)
    service = start_service(config, log_level="DEBUG", env=fault_env(nofile="40"))
    service.wait_for_log(r"raised the file-descriptor limit \(RLIMIT_NOFILE\) from 40 to \d+")
    assert soft_fd_limit(service.pid) > 40
    service.wait_for_log(r"worker 15 \(pid \d+\) ready", timeout=10)
    assert "could not start worker" not in service.log
    assert service.stop() == 0


def test_a_worker_that_cannot_start_its_output_thread_says_why_in_the_service_log(
    start_service: StartService, service_config: dict[str, Any]
) -> None:
    service = start_service(service_config, wait=False, env=fault_env(worker_no_threads="1"))
    service.wait_for_log(r"worker 0 died before it was ready|worker 0 \(pid \d+\) died before")
    service.wait_for_log(r"worker 0 ended .*can't start new thread")
    assert service.stop() == 0


def pause_said(line: str) -> float:
    """The seconds a line saying that a worker could not start gives the next start."""
    said = re.search(r"starting the next one in ([\d.]+) s$", line)
    assert said is not None, f"no pause said: {line!r}"
    return float(said[1])


def test_workers_that_cannot_be_forked_are_retried_with_a_growing_pause_naming_the_limit(
    start_service: StartService, service_config: dict[str, Any]
) -> None:
    service_config["service"]["pool"] = {"min_workers": 4, "max_workers": 4}
    service = start_service(service_config, wait=False, env=fault_env(no_fork="1"))
    # (The first comes once the service has started: seconds, on a loaded machine.)
    lines = service.wait_for_log(r"ERROR .*could not start worker", count=2, timeout=30)
    assert "Resource temporarily unavailable" in lines[0]
    assert "RLIMIT_NPROC" in lines[0]
    assert [pause_said(line) for line in lines[:2]] == [0.5, 1.0]
    # Each pause is kept, whenever the log is read: no line comes before the one it says
    # (they came dozens a second), and the four workers started at once said it once.
    lines = [line for line in service.log.splitlines() if "could not start worker" in line]
    for line, later in itertools.pairwise(lines):
        apart = (logged_at(later) - logged_at(line)).total_seconds()
        # (Half: the service may be held up between starting a pause and writing its line.)
        assert apart >= pause_said(line) / 2, (line, later)
    assert service.stop() == 0


def test_a_socket_path_refused_is_named_whole_and_the_stop_is_quiet(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path
) -> None:
    """A relative path's error names its directory; stopping the brokers that started
    meanwhile (pg_notify, mid-statement) adds no warning of psycopg's."""
    service_config["brokers"]["socket"] = {"path": "no-such-folder/service.sock"}
    service = start_service(service_config, wait=False)
    assert service.wait(30) == 2
    whole = service.folder / "no-such-folder" / "service.sock"
    said = (
        f"cannot listen on socket {whole}: No such file or directory: the directory"
        f" {whole.parent} does not exist: create it, or set brokers.socket.path to a path in"
        " one that does"
    )
    assert said in service.log, service.log
    assert "psycopg" not in service.log, service.log


def test_a_socket_directory_the_services_user_may_not_write_is_named_with_what_to_do(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path
) -> None:
    """An unprivileged user (here root without its capabilities: the directory is another
    user's) is told which directory refused and which setting to change."""
    folder = tmp_path / "not-yours"
    folder.mkdir(mode=0o755)
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to drop the capabilities")
        os.chown(folder, 65534, 65534)
        prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    else:
        folder.chmod(0o555)
    service_config["brokers"]["socket"] = {"path": str(folder / "service.sock")}
    service = start_service(service_config, wait=False, prefix=prefix)
    assert service.wait(30) == 2
    said = (
        f"cannot listen on socket {folder / 'service.sock'}: Permission denied: this service's"
        f" user (uid {os.geteuid()}) may not create files in {folder}: let it, or set"
        " brokers.socket.path to a path in a directory it may write"
    )
    assert said in service.log, service.log


def test_the_service_silences_psycopgs_warning_about_its_own_cancellations(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement cancelled by the service (a stop, a refused start) costs no warning."""
    psycopg_logger = logging.getLogger("psycopg")

    async def cancel_a_statement() -> None:
        conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        with anyio.move_on_after(0.1):
            await conn.execute("SELECT pg_sleep(5)")
        await conn.close()

    with caplog.at_level(logging.WARNING, logger="psycopg"):
        anyio.run(cancel_a_statement)  # (psycopg as it is: the warning this is about)
        assert "query cancellation interrupted (CancelledError)" in caplog.text
        caplog.clear()
        with quiet_own_cancellations():
            anyio.run(cancel_a_statement)
            psycopg_logger.warning("query cancellation failed: %s", "something else")
    assert not any(isinstance(f, OwnCancellations) for f in psycopg_logger.filters)
    assert [r.getMessage() for r in caplog.records] == ["query cancellation failed: something else"]


def test_a_stop_signal_during_a_shortage_of_threads_at_start_stops_the_service(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path
) -> None:
    """The metrics server waiting for a thread holds neither the service's start (it
    serves meanwhile) nor its stop: SIGTERM ends it promptly, with exit status 0."""
    service_config["brokers"]["socket"] = {"path": str(tmp_path / "service.sock")}
    service_config["service"]["metrics"] = {"host": "localhost", "port": free_port()}
    env = fault_env(no_threads=str(tmp_path / "threads-back"))
    service = start_service(service_config, wait=False, env=env)
    service.wait_for_log(r"metrics.*can't start new thread", count=2)
    assert service.stop(timeout=10) == 0, service.log
    assert "received SIGTERM: shutting down" in service.log
    assert "Traceback" not in service.log, service.log


def test_a_fork_server_that_cannot_be_started_is_a_one_line_refusal(
    start_service: StartService, service_config: dict[str, Any]
) -> None:
    service = start_service(service_config, wait=False, env=fault_env(no_spawn="1"))
    assert service.wait(20) == 2, service.log
    assert re.search(r"CRITICAL .*cannot start the fork server: .*RLIMIT_NPROC", service.log)
    assert "Traceback" not in service.log, service.log


def test_the_default_pool_size_is_the_cpus_the_service_may_run_on(
    start_service: StartService, service_config: dict[str, Any]
) -> None:
    # It was os.cpu_count(): the machine's CPUs, whatever the process's affinity (a cpuset,
    # taskset) or its container's CPU limit allowed.
    service_config["service"]["pool"] = {"min_workers": 1}  # max_workers: the default
    service = start_service(service_config, env=fault_env(cpus="1"))
    service.wait_for_log(r"dispatcher service \S+ started \(pid \d+, 1-1 workers, ")
