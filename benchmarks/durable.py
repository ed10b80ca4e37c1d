"""Durable-queue throughput: dispatcher's pg_queue (1 and 3 services) beside PgQueuer.

Run with ``hatch run bench-durable [--dsn DSN]``. Each measurement publishes ``--jobs`` no-op
jobs in batches of ``--batch`` into a durable queue whose consumers are already running and
warmed up, and times from the first publication until the last job is acknowledged in the
database (dispatcher: no job left queued or running; PgQueuer: its queue table empty).
Consumers run only during their own measurement, and the systems alternate within each run
(dispatcher 1 service, PgQueuer 1 process, dispatcher 3 services, PgQueuer 3 processes), so
that both see the same machine; medians over ``--runs``.

For dispatcher it also says where the time goes: CPU microseconds per job (user + system,
from ``/proc/<pid>/stat``, sampled before and after each measurement) of the services' main
processes, of their workers (every descendant of a main process), of the PostgreSQL backends
of the benchmark's database (the services' connections, the publisher's, and the rest:
autovacuum and the like; the benchmark's own progress polls are left out), of the publisher
(this process, while it publishes), and of the whole machine (every CPU, whoever used it:
on a shared machine, the part nobody above accounts for is someone else's). Rates are noisy
on a small or busy machine; CPU per job much less so.

PgQueuer is not a dependency of dispatcher: the benchmark installs it, with asyncpg, into a
virtual environment of its own under ``.tmp/bench/`` (once; reused afterwards) and drives it
through ``pgqueuer_side.py``: per process, ``--pgqueuer-dequeuers`` queue managers (5, as in
PgQueuer's own benchmark) taking batches of ``--pgqueuer-batch-size`` (100, the size of
dispatcher's claims; PgQueuer's default of 10 is several times slower), a no-op async
entrypoint on uvloop, and a producer enqueuing in batches of ``--batch``. Each system gets a
database of its own on the server of ``--dsn``, created afresh and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import psycopg
from live_service import DEFAULT_DSN, LiveService, compile_dispatcher
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dispatcher.config import setup
from dispatcher.publish import batch as batch_of_jobs
from dispatcher.publish import submit_task

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".tmp" / "bench"
PGQUEUER_VERSION = "1.6.0"
QUEUE = "bench_durable"
WARM_UP_JOBS = 500
PUBLISHER_APP = "bench-publisher"
TIMEOUT = 300.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(poll)


def scalar(dsn: str, query: str | sql.Composable) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def execute(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def fresh_database(admin_dsn: str, name: str) -> str:
    """Create the database *name* afresh (dropping an old one); return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin_dsn, dbname=name)


def as_uri(conninfo: str) -> str:
    """*conninfo* as a ``postgresql://`` URI (asyncpg reads no ``key=value`` strings)."""
    params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = params.pop("host", "127.0.0.1")
    port = params.pop("port", "5432")
    database = quote(params.pop("dbname", ""), safe="")
    return f"postgresql://{auth}{host}:{port}/{database}"


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


TICK = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second: the unit of the CPU times in ``/proc``."""

CPU_PARTS = (
    "service main",
    "workers",
    "pg: services",
    "pg: publisher",
    "pg: other",
    "publisher",
    "machine",
)
"""The parts of a dispatcher measurement's CPU time, in the order they are printed."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process *pid* has used so far; ``None`` if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every CPU, every process)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def descendants(pid: int) -> set[int]:
    """Every live descendant of process *pid* (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class CpuSample:
    """The CPU seconds used so far by each process of a dispatcher measurement, by part."""

    def __init__(
        self, conn: psycopg.Connection[Any], service_pids: list[int], publisher_app: str
    ) -> None:
        self.machine = machine_busy_seconds()
        self.publisher = time.process_time()
        self.parts: dict[str, dict[int, float]] = {part: {} for part in CPU_PARTS[:5]}
        for pid in service_pids:
            self._add("service main", pid)
            for child in descendants(pid):
                self._add("workers", child)
        query = (
            "SELECT pid, application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        for pid, name in conn.execute(query).fetchall():
            if name.startswith("dispatcher"):
                part = "pg: services"
            elif name == publisher_app:
                part = "pg: publisher"
            else:
                part = "pg: other"
            self._add(part, pid)

    def _add(self, part: str, pid: int) -> None:
        seconds = cpu_seconds(pid)
        if seconds is not None:
            self.parts[part][pid] = seconds

    def used_since(self, before: CpuSample) -> dict[str, float]:
        """CPU seconds each part used between *before* and this sample.

        A process seen only now counts whole (it started in between); one gone by now
        counts nothing after *before* (its last moments are lost: rare, and small).
        """
        used = {
            part: sum(now - before.parts[part].get(pid, 0.0) for pid, now in pids.items())
            for part, pids in self.parts.items()
        }
        used["publisher"] = self.publisher - before.publisher
        used["machine"] = self.machine - before.machine
        return used


class Contender(Protocol):
    """One system under test: its consumers, its producer, its idea of done."""

    def label(self, consumers: int) -> str: ...

    def start(self, consumers: int, folder: Path) -> None: ...

    def run_jobs(self, jobs: int, batch: int) -> float: ...

    def stop(self) -> None: ...

    def cpu(self) -> dict[str, float] | None:
        """CPU seconds by part during the last :meth:`run_jobs`, if it measures them."""


class DurableService(LiveService):
    """A dispatcher service consuming the benchmark's durable queue (and a control socket)."""

    def __init__(self, folder: Path, dsn: str, workers: int) -> None:
        super().__init__(folder, dsn, workers, log_level="WARNING")
        self.config["brokers"] = {
            "pg_queue": {"conninfo": dsn, "queues": [QUEUE]},
            "socket": {"path": str(self.socket_path)},
        }

    def _listening(self) -> bool:
        return True  # the warm-up jobs show that the queue is served


class Dispatcher:
    """dispatcher's ``pg_queue`` broker: services as subprocesses, the publisher in-process."""

    def __init__(self, admin_dsn: str, workers: int) -> None:
        self.dsn = fresh_database(admin_dsn, "bench_durable_dispatcher")
        self.workers = workers
        self.services: list[DurableService] = []
        self._cpu: dict[str, float] | None = None
        config = {"version": 1, "brokers": {"pg_queue": {"conninfo": self.dsn, "queues": [QUEUE]}}}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dispatcher.yml"
            path.write_text(json.dumps(config))  # JSON is YAML
            command = [
                sys.executable,
                "-m",
                "dispatcher.server.ctl",
                "migrate",
                "--config",
                str(path),
            ]
            subprocess.run(command, check=True, capture_output=True, timeout=60)
        # The publisher's connection is named, so that its backend's CPU is told apart.
        publisher_dsn = make_conninfo(self.dsn, application_name=PUBLISHER_APP)
        setup(
            {"version": 1, "brokers": {"pg_queue": {"conninfo": publisher_dsn, "queues": [QUEUE]}}}
        )

    def label(self, consumers: int) -> str:
        noun = "service" if consumers == 1 else "services"
        return f"dispatcher pg_queue, {consumers} {noun} x {self.workers} workers"

    def start(self, consumers: int, folder: Path) -> None:
        execute(self.dsn, "TRUNCATE dispatcher.jobs")
        for n in range(consumers):
            place = folder / f"service-{n}"
            place.mkdir()
            self.services.append(DurableService(place, self.dsn, self.workers).start())
        self.run_jobs(WARM_UP_JOBS, WARM_UP_JOBS)

    def run_jobs(self, jobs: int, batch: int) -> float:
        open_jobs = "SELECT count(*) FROM dispatcher.jobs WHERE state IN ('queued', 'running')"
        with psycopg.connect(self.dsn, autocommit=True, application_name="bench-poll") as conn:
            pids = [service.pid for service in self.services]
            submit_task("bench_tasks.noop", queue=QUEUE)  # the publisher's connection is open
            wait_for(lambda: _scalar(conn, open_jobs) == 0, TIMEOUT, "dispatcher's first job")
            before = CpuSample(conn, pids, PUBLISHER_APP)
            started = time.perf_counter()
            for first in range(0, jobs, batch):
                with batch_of_jobs():
                    for _ in range(min(batch, jobs - first)):
                        submit_task("bench_tasks.noop", queue=QUEUE)
            published = time.process_time()
            wait_for(lambda: _scalar(conn, open_jobs) == 0, TIMEOUT, "dispatcher's jobs")
            elapsed = time.perf_counter() - started
            after = CpuSample(conn, pids, PUBLISHER_APP)
            after.publisher = published  # the publisher's work, not the polls that follow
            self._cpu = after.used_since(before)
        failed = scalar(self.dsn, "SELECT count(*) FROM dispatcher.jobs WHERE state <> 'done'")
        if failed:
            raise SystemExit(f"{failed} dispatcher jobs did not end done")
        return elapsed

    def cpu(self) -> dict[str, float] | None:
        """CPU seconds by part during the last :meth:`run_jobs`."""
        return self._cpu

    def stop(self) -> None:
        for service in self.services:
            service.stop()
        self.services = []


class PgQueuer:
    """PgQueuer in its own virtual environment: consumer processes and a producer process."""

    def __init__(self, admin_dsn: str, version: str, dequeuers: int, batch_size: int) -> None:
        self.version = version
        self.dequeuers = dequeuers
        self.batch_size = batch_size
        self.python = pgqueuer_python(version)
        self.dsn = fresh_database(admin_dsn, "bench_durable_pgqueuer")
        if self._side("install").wait(60) != 0:
            raise SystemExit("cannot install PgQueuer's tables")
        self.consumers: list[subprocess.Popen[str]] = []

    def _side(self, *args: str) -> subprocess.Popen[str]:
        command = [str(self.python), str(HERE / "pgqueuer_side.py"), *args, as_uri(self.dsn)]
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def label(self, consumers: int) -> str:
        noun = "process" if consumers == 1 else "processes"
        shape = f"{self.dequeuers} dequeuers x batch {self.batch_size}"
        return f"PgQueuer {self.version}, {consumers} {noun} x {shape}"

    def start(self, consumers: int, folder: Path) -> None:
        execute(self.dsn, "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
        for _ in range(consumers):
            process = self._side(
                "consume",
                *("--dequeuers", str(self.dequeuers), "--batch-size", str(self.batch_size)),
            )
            self.consumers.append(process)
            if _line(process) != "ready":
                raise SystemExit("a PgQueuer consumer did not start")
        self.run_jobs(WARM_UP_JOBS, WARM_UP_JOBS)

    def run_jobs(self, jobs: int, batch: int) -> float:
        producer = self._side("produce", "--jobs", str(jobs), "--batch", str(batch))
        if _line(producer) != "ready":
            raise SystemExit("the PgQueuer producer did not start")
        started = time.perf_counter()
        assert producer.stdin is not None
        producer.stdin.write("go\n")
        producer.stdin.flush()
        if _line(producer) != "done":
            raise SystemExit("the PgQueuer producer failed")
        wait_for(
            lambda: scalar(self.dsn, "SELECT count(*) FROM pgqueuer") == 0, TIMEOUT, "PgQueuer"
        )
        elapsed = time.perf_counter() - started
        producer.wait(30)
        return elapsed

    def cpu(self) -> dict[str, float] | None:
        """Not measured for PgQueuer."""
        return None

    def stop(self) -> None:
        for process in self.consumers:
            process.terminate()
        for process in self.consumers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.consumers = []


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def pgqueuer_python(version: str) -> Path:
    """The Python of a virtual environment holding PgQueuer *version* and asyncpg (made once)."""
    venv = CACHE / f"pgqueuer-{version}"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import asyncpg, pgqueuer; print(pgqueuer.__version__)"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == version:
            return python
    print(f"installing PgQueuer {version} and asyncpg into {venv.relative_to(HERE.parent)} (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "-q", f"pgqueuer[asyncpg]=={version}"]
    subprocess.run(install, check=True, timeout=600)
    return python


def measure(
    contender: Contender, consumers: int, jobs: int, batch: int
) -> tuple[float, dict[str, float] | None]:
    """Jobs per second of one measurement, consumers started and stopped around it, and the
    CPU microseconds per job of each part (when the contender measures them)."""
    with tempfile.TemporaryDirectory() as tmp:
        contender.start(consumers, Path(tmp))
        try:
            rate = jobs / contender.run_jobs(jobs, batch)
        finally:
            contender.stop()
    cpu = contender.cpu()
    per_job = None if cpu is None else {part: 1e6 * s / jobs for part, s in cpu.items()}
    return rate, per_job


def cpu_line(per_job: dict[str, float]) -> str:
    """CPU microseconds per job, by part, on one line."""
    parts = ", ".join(f"{part} {per_job[part]:.0f}" for part in CPU_PARTS)
    ours = sum(per_job[part] for part in CPU_PARTS[:-1])
    return f"CPU µs/job: {parts} (accounted {ours:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="a database on the server to use")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000, help="jobs published per batch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="workers per dispatcher service")
    parser.add_argument("--services", default="1,3", help="consumer counts to measure")
    parser.add_argument("--only", choices=("dispatcher", "pgqueuer"), help="measure one system")
    parser.add_argument("--pgqueuer-version", default=PGQUEUER_VERSION)
    parser.add_argument("--pgqueuer-dequeuers", type=int, default=5)
    parser.add_argument("--pgqueuer-batch-size", type=int, default=100)
    options = parser.parse_args()
    compile_dispatcher()
    counts = [int(n) for n in options.services.split(",")]
    contenders: dict[str, Contender] = {}
    if options.only != "pgqueuer":
        contenders["dispatcher"] = Dispatcher(options.dsn, options.workers)
    if options.only != "dispatcher":
        contenders["pgqueuer"] = PgQueuer(
            options.dsn,
            options.pgqueuer_version,
            options.pgqueuer_dequeuers,
            options.pgqueuer_batch_size,
        )
    print(
        f"durable queues: {options.jobs:,} no-op jobs published in batches of {options.batch:,}, "
        f"medians of {options.runs} runs",
        flush=True,
    )
    rates: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for run in range(options.runs):
            for consumers in counts:
                for name, contender in contenders.items():
                    rate, cpu = measure(contender, consumers, options.jobs, options.batch)
                    rates.setdefault((name, consumers), []).append(rate)
                    print(
                        f"  run {run + 1}: {contender.label(consumers)}: {rate:,.0f} jobs/s",
                        flush=True,
                    )
                    if cpu is not None:
                        cpus.setdefault((name, consumers), []).append(cpu)
                        print(f"    {cpu_line(cpu)}", flush=True)
    finally:
        for contender in contenders.values():
            contender.stop()
        for name in ("bench_durable_dispatcher", "bench_durable_pgqueuer"):
            drop_database(options.dsn, name)
    report(counts, contenders, rates, cpus)


def report(
    counts: list[int],
    contenders: dict[str, Contender],
    rates: dict[tuple[str, int], list[float]],
    cpus: dict[tuple[str, int], list[dict[str, float]]],
) -> None:
    print("medians:")
    medians = {key: statistics.median(values) for key, values in rates.items()}
    for consumers in counts:
        for name, contender in contenders.items():
            print(f"  {contender.label(consumers):58s} {medians[name, consumers]:8,.0f} jobs/s")
            samples = cpus.get((name, consumers))
            if samples:
                median = {p: statistics.median(s[p] for s in samples) for p in CPU_PARTS}
                print(f"    {cpu_line(median)}")
        if len(contenders) == 2:
            ratio = medians["dispatcher", consumers] / medians["pgqueuer", consumers]
            print(f"  {'ratio dispatcher / PgQueuer':58s} {ratio:8.2f}x")
    if "dispatcher" in contenders and 1 in counts:
        one = medians["dispatcher", 1]
        verdict = "met" if one >= 5000 else "NOT met"
        print(f"target >= 5,000 jobs/s with one service: {verdict} ({one:,.0f})")
        if "pgqueuer" in contenders:
            ratio = one / medians["pgqueuer", 1]
            verdict = "met" if ratio >= 2 else "NOT met"
            print(f"target >= 2x PgQueuer with one service: {verdict} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
