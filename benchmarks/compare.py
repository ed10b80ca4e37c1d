"""Side by side: dispatcher and dispatcherd 2026.5.27, driven by one black-box harness.

Run with ``hatch run bench-compare [--dsn DSN] [--pairs 3]``. Each pair runs both services,
one after the other (the order alternates from pair to pair), each with ``--workers`` workers
(4), the pg_notify broker and one channel of its own. Both run the same tasks
(``compare_tasks.py``), receive the same JSON task messages (``task``, ``args``, ``uuid``,
``time_pub``), sent by the same raw ``SELECT pg_notify(channel, payload)`` from this process,
and are watched only from outside: files the tasks write, and /proc. Per service run:

- time to first task: from just before ``Popen`` of the service until a task starts (the task
  records ``time.time()``); a task is published every 5 ms from the moment of ``Popen``
  until one has run, so this counts start-up, LISTEN and the first worker being ready;
- idle memory: PSS (from ``/proc/<pid>/smaps_rollup``) summed over the whole process tree
  (main process and every descendant), 2 s after a warm-up of 200 tasks, and again 2 s
  after all the measurements below ("after load");
- throughput at each ``--backlogs`` size (5,000 and 20,000): no-op tasks (each appends one
  byte to a file) published in batches of ``--batch`` (1,000), each batch one transaction
  (pipelined), payloads built beforehand; timed from the first publication until the file
  holds one byte per task;
- CPU per task in those runs, from utime + stime in ``/proc/<pid>/stat``: of the main
  process, and summed over the worker processes, i.e. every descendant of the main process
  except multiprocessing's resource tracker (dispatcher: its fork server and the workers it
  forks; dispatcherd: multiprocessing's forkserver and the workers it forks); the output
  names what was counted;
- latency: ``--latency-samples`` single tasks, 3 ms apart, to idle workers; the task
  records how long after the publisher's ``time.time()`` it started (p50, p99), beside the
  floor of this machine in the same run: a bare NOTIFY to an asyncio psycopg listener in
  another process, sent the same way (``raw_latencies`` of ``service.py``).

The table gives, per metric, each service's median over the pairs, the ratio dispatcher /
dispatcherd of each pair and the median of those ratios. dispatcher runs as ``python -m
dispatcher.server``, dispatcherd as its ``dispatcherd`` command, both at ``--log-level``
ERROR (at WARNING, dispatcherd logs a line for every task it has to queue, which the
throughput would then measure) and with defaults otherwise (dispatcherd's pg_notify broker
keeps its self-check after 30 s idle). dispatcherd is not a dependency of dispatcher: the
benchmark installs it, with psycopg[binary], into a virtual environment of its own under
``.tmp/bench/`` (once; reused afterwards). On a busy machine the numbers are noisy: read the
per-pair ratios.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from live_service import DEFAULT_DSN, compile_dispatcher, descendants, parent_pid
from service import cpu_seconds, percentile, raw_latencies, wait_for

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".tmp" / "bench"
DISPATCHERD_VERSION = "2026.5.27"
WARM_UP_TASKS = 200
IDLE_SECONDS = 2.0
STARTUP_TIMEOUT = 60.0
STARTUP_PUBLISH_INTERVAL = 0.005
LATENCY_INTERVAL = 0.003
NOT_WORKERS = ("resource tracker",)
"""Roles of descendants left out of the worker CPU (they do no task work)."""


def dispatcherd_python(version: str) -> Path:
    """The Python of a virtual environment holding dispatcherd *version* (made once)."""
    venv = CACHE / f"dispatcherd-{version}"
    python = venv / "bin" / "python"
    check = [
        str(python),
        "-c",
        "import importlib.metadata, psycopg, dispatcherd.cli;"
        " print(importlib.metadata.version('dispatcherd'))",
    ]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == version:
            return python
    print(f"installing dispatcherd {version} into {venv.relative_to(HERE.parent)} (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "-q", f"dispatcherd[pg-notify-dev]=={version}"]
    subprocess.run(install, check=True, timeout=600)
    return python


@dataclass(frozen=True)
class Contender:
    """How to configure and start one of the two services."""

    name: str
    config: Callable[[str, str, int], dict[str, Any]]
    """(dsn, channel, workers) -> the content of its config file."""
    command: Callable[[Path, str], list[str]]
    """(config file, log level) -> the command line that runs the service."""


def dispatcher_contender() -> Contender:
    def config(dsn: str, channel: str, workers: int) -> dict[str, Any]:
        return {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}},
            "tasks": {"modules": ["compare_tasks"]},
            "service": {
                "node_id": channel,
                "pool": {"min_workers": workers, "max_workers": workers},
            },
        }

    def command(config_path: Path, log_level: str) -> list[str]:
        return [
            *(sys.executable, "-m", "dispatcher.server"),
            *("--log-level", log_level, "--config", str(config_path)),
        ]

    return Contender("dispatcher", config, command)


def dispatcherd_contender(version: str) -> Contender:
    python = dispatcherd_python(version)

    def config(dsn: str, channel: str, workers: int) -> dict[str, Any]:
        return {
            "version": 2,
            "brokers": {
                "pg_notify": {
                    "config": {"conninfo": dsn},
                    "channels": [channel],
                    "default_publish_channel": channel,
                }
            },
            "service": {
                "main_kwargs": {"node_id": channel},
                "pool_kwargs": {"min_workers": workers, "max_workers": workers},
            },
        }

    def command(config_path: Path, log_level: str) -> list[str]:
        script = python.parent / "dispatcherd"
        return [str(script), "--log-level", log_level, "--config", str(config_path)]

    return Contender(f"dispatcherd {version}", config, command)


def message(task: str, *args: Any) -> str:
    """A task message as both services take it (dispatcherd's wire format)."""
    body = {
        "task": f"compare_tasks.{task}",
        "args": list(args),
        "uuid": str(uuid.uuid4()),
        "time_pub": time.time(),
    }
    return json.dumps(body)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def roles(main_pid: int) -> dict[int, str]:
    """What each descendant of *main_pid* is, told by its place in the tree (and the resource
    tracker by its command line): a child of the main process with children of its own is a
    fork server, and its children are workers."""
    parents = {pid: parent_pid(pid) for pid in descendants(main_pid)}

    def depth(pid: int | None) -> int:
        return 0 if pid not in parents else 1 + depth(parents[pid])

    found: dict[int, str] = {}
    for pid in sorted(parents, key=depth):  # parents before their children
        command, parent = cmdline(pid), parents[pid]
        if "resource_tracker" in command:
            found[pid] = "resource tracker"
        elif parent == main_pid and pid in parents.values():  # a child with children
            found[pid] = "fork server"
        elif parent is not None and found.get(parent) == "fork server":
            found[pid] = "worker"
        else:
            found[pid] = "other process"
    return found


def plural(count: int, noun: str) -> str:
    return (
        f"{count} {noun}" if count == 1 else f"{count} {noun}{'es' if noun.endswith('s') else 's'}"
    )


def describe(main_pid: int) -> str:
    """Which descendants the worker CPU counts and which it leaves out."""
    counts = sorted(collections.Counter(roles(main_pid).values()).items())
    counted = [plural(n, role) for role, n in counts if role not in NOT_WORKERS]
    left_out = [plural(n, role) for role, n in counts if role in NOT_WORKERS]
    counted_text = " + ".join(counted) or "nothing"
    return f"counted {counted_text}; not counted: {', '.join(left_out) or 'nothing'}"


def worker_cpu(main_pid: int) -> dict[int, float]:
    """CPU seconds so far of each descendant of *main_pid* that counts as a worker."""
    seconds: dict[int, float] = {}
    for pid, role in roles(main_pid).items():
        if role not in NOT_WORKERS:
            with contextlib.suppress(OSError, IndexError):
                seconds[pid] = cpu_seconds(pid)
    return seconds


def pss_bytes(pid: int) -> int:
    """Proportional set size of process *pid* (0 if it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_pss(main_pid: int) -> int:
    return sum(pss_bytes(pid) for pid in {main_pid, *descendants(main_pid)})


class Service:
    """One run of a contender: its own folder, channel and config; started by :meth:`start`."""

    def __init__(
        self, contender: Contender, folder: Path, dsn: str, workers: int, log_level: str
    ) -> None:
        self.contender = contender
        self.log_level = log_level
        self.folder = folder
        self.dsn = dsn
        self.channel = f"bench_cmp_{uuid.uuid4().hex[:12]}"
        self.config_path = folder / "dispatcher.yml"
        self.config_path.write_text(json.dumps(contender.config(dsn, self.channel, workers)))
        self.log_path = folder / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.publisher = psycopg.connect(dsn, autocommit=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def notify(self, payload: str) -> None:
        self.publisher.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))

    def notify_batches(self, payloads: list[str], size: int) -> None:
        """Send *payloads*, *size* per transaction, each batch pipelined."""
        with self.publisher.cursor() as cursor:
            for first in range(0, len(payloads), size):
                with self.publisher.transaction():
                    params = [(self.channel, p) for p in payloads[first : first + size]]
                    cursor.executemany("SELECT pg_notify(%s, %s)", params)

    def start(self) -> float:
        """Start the service; return seconds from just before Popen to its first task's start."""
        path = self.folder / "started"
        path.touch()
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        for name in ("DISPATCHER_CONFIG_FILE", "DISPATCHERD_CONFIG_FILE"):
            env.pop(name, None)
        command = self.contender.command(self.config_path, self.log_level)
        with self.log_path.open("wb") as log:
            before = time.time()
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while path.stat().st_size == 0:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"{self.contender.name} exited at start; its log:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.contender.name} ran no task in {STARTUP_TIMEOUT} s")
            self.notify(message("started", str(path)))
            time.sleep(STARTUP_PUBLISH_INTERVAL)
        text = path.read_text()
        return min(float(line) for line in text[: text.rindex("\n")].splitlines()) - before

    def throughput(self, count: int, batch: int) -> tuple[float, float, float]:
        """Run *count* tasks; return (tasks/s, main CPU us/task, worker CPU us/task)."""
        path = self.folder / f"ticks-{uuid.uuid4().hex}"
        path.touch()
        payloads = [message("tick", str(path)) for _ in range(count)]
        main_before, workers_before = cpu_seconds(self.pid), worker_cpu(self.pid)
        started = time.perf_counter()
        self.notify_batches(payloads, batch)
        wait_for(lambda: path.stat().st_size >= count, timeout=300)
        elapsed = time.perf_counter() - started
        main = cpu_seconds(self.pid) - main_before
        workers_after = worker_cpu(self.pid)
        workers = sum(cpu - workers_before.get(pid, 0.0) for pid, cpu in workers_after.items())
        return count / elapsed, main / count * 1e6, workers / count * 1e6

    def latencies(self, count: int) -> list[float]:
        """NOTIFY-to-task-start delays (ms) of *count* single tasks sent 3 ms apart."""
        path = self.folder / f"stamps-{uuid.uuid4().hex}"
        path.touch()
        for _ in range(count):
            self.notify(message("stamp", str(path), time.time()))
            time.sleep(LATENCY_INTERVAL)
        wait_for(lambda: len(path.read_text().splitlines()) >= count, timeout=30)
        return [float(line) * 1000 for line in path.read_text().splitlines()]

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, wait; kill whatever is left of the process tree."""
        self.publisher.close()
        if self.process is None:
            return
        leftovers = descendants(self.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    better: str
    fmt: str


def metrics(backlogs: list[int]) -> list[Metric]:
    rows = [Metric("startup", "time to first task", "ms", "lower", ".0f")]
    for backlog in backlogs:
        rows += [
            Metric(
                f"rate{backlog}", f"throughput, backlog {backlog:,}", "tasks/s", "higher", ",.0f"
            ),
            Metric(f"main{backlog}", f"main CPU, backlog {backlog:,}", "us/task", "lower", ".1f"),
            Metric(
                f"workers{backlog}", f"worker CPU, backlog {backlog:,}", "us/task", "lower", ".1f"
            ),
        ]
    rows += [
        Metric("p50", "NOTIFY-to-task-start p50", "ms", "lower", ".2f"),
        Metric("p99", "NOTIFY-to-task-start p99", "ms", "lower", ".2f"),
        Metric("floor50", "bare NOTIFY floor p50", "ms", "lower", ".2f"),
        Metric("floor99", "bare NOTIFY floor p99", "ms", "lower", ".2f"),
        Metric("pss_warm", "idle PSS, tree, warmed up", "MiB", "lower", ".1f"),
        Metric("pss_load", "idle PSS, tree, after load", "MiB", "lower", ".1f"),
    ]
    return rows


def measure(contender: Contender, options: argparse.Namespace) -> tuple[dict[str, float], str]:
    """One run of *contender*: its results by metric key, and what its worker CPU counted."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        service = Service(contender, Path(tmp), options.dsn, options.workers, options.log_level)
        try:
            results["startup"] = service.start() * 1000
            service.throughput(WARM_UP_TASKS, options.batch)
            time.sleep(IDLE_SECONDS)
            results["pss_warm"] = tree_pss(service.pid) / 2**20
            counted = describe(service.pid)
            for backlog in options.backlog_sizes:
                rate, main, workers = service.throughput(backlog, options.batch)
                results[f"rate{backlog}"] = rate
                results[f"main{backlog}"] = main
                results[f"workers{backlog}"] = workers
            delays = service.latencies(options.latency_samples)
            results["p50"], results["p99"] = percentile(delays, 0.5), percentile(delays, 0.99)
            floor = raw_latencies(options.dsn, options.latency_samples)
            results["floor50"], results["floor99"] = percentile(floor, 0.5), percentile(floor, 0.99)
            time.sleep(IDLE_SECONDS)
            results["pss_load"] = tree_pss(service.pid) / 2**20
        finally:
            service.stop()
    return results, counted


def report(runs: list[tuple[dict[str, float], dict[str, float]]], rows: list[Metric]) -> None:
    """Print a row per metric: the medians of both, then the ratios dispatcher / dispatcherd."""
    width = max(len(f"{m.label} ({m.unit})") for m in rows)
    columns = ("better", f"{'dispatcher':>11s}", f"{'dispatcherd':>11s}", "ratio")
    header = f"{'metric (unit)':{width}s}  {'  '.join(columns)}  per-pair ratios"
    print(header)
    print("-" * len(header))
    for metric in rows:
        ours = [pair[0][metric.key] for pair in runs]
        theirs = [pair[1][metric.key] for pair in runs]
        ratios = [a / b if b else float("nan") for a, b in zip(ours, theirs, strict=True)]
        label = f"{metric.label} ({metric.unit})"
        print(
            f"{label:{width}s}  {metric.better:6s}  {statistics.median(ours):>11{metric.fmt}}"
            f"  {statistics.median(theirs):>11{metric.fmt}}  {statistics.median(ratios):5.2f}"
            f"  {' '.join(f'{r:.2f}' for r in ratios)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--pairs", type=int, default=3, help="runs of each service (alternating)")
    parser.add_argument("--workers", type=int, default=4, help="workers of each service")
    parser.add_argument("--backlogs", default="5000,20000", help="backlog sizes to time")
    parser.add_argument("--batch", type=int, default=1000, help="tasks published per transaction")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--dispatcherd-version", default=DISPATCHERD_VERSION)
    parser.add_argument(
        "--log-level",
        default="ERROR",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="of both services (at WARNING dispatcherd logs every task it queues)",
    )
    options = parser.parse_args()
    compile_dispatcher()
    options.backlog_sizes = [int(b) for b in options.backlogs.split(",")]
    contenders = (dispatcher_contender(), dispatcherd_contender(options.dispatcherd_version))
    print(
        f"{contenders[0].name} vs {contenders[1].name}: {options.workers} workers each, pg_notify,"
        f" one channel each, log level {options.log_level}; {options.pairs} pair(s), the order"
        " alternating"
    )
    runs: list[tuple[dict[str, float], dict[str, float]]] = []
    counted: dict[str, str] = {}
    for pair in range(options.pairs):
        order = contenders if pair % 2 == 0 else contenders[::-1]
        results: dict[str, dict[str, float]] = {}
        for contender in order:
            started = time.monotonic()
            results[contender.name], counted[contender.name] = measure(contender, options)
            print(
                f"  pair {pair + 1}/{options.pairs}: {contender.name} measured"
                f" in {time.monotonic() - started:.0f} s",
                flush=True,
            )
        runs.append((results[contenders[0].name], results[contenders[1].name]))
    print()
    print("worker CPU = utime + stime (/proc/<pid>/stat) of the main process's descendants:")
    for contender in contenders:
        print(f"  {contender.name}: {counted[contender.name]}")
    print("idle PSS = Pss of /proc/<pid>/smaps_rollup, main process + every descendant")
    print(
        f"medians over {options.pairs} pair(s); ratio = dispatcher / dispatcherd (median of pairs)"
    )
    print()
    report(runs, metrics(options.backlog_sizes))


if __name__ == "__main__":
    main()
