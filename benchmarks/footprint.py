"""Start-up time and idle memory of a service with ``--workers`` workers.

Run with ``hatch run bench-footprint [--dsn DSN] [--runs N]``. Each run starts
``dispatcher-standalone`` (the service's own channel, ``bench_tasks`` as its task module) and,
from just before it is started, publishes a task over pg_notify every 5 ms until one runs:
the task records when it started, and the time to the first task is that minus the moment
the process was started. Once the service has been idle for ``--idle`` seconds, it reads
the proportional set size (PSS: shared pages divided among the processes sharing them) of
every process of the service's tree from ``/proc/<pid>/smaps_rollup``, with RSS beside it
for reference, and the CPU time each process has used so far (start-up, mostly: a steadier
measure than the time to the first task on a busy machine), and prints each process and the
sums. Medians over ``--runs``.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass
from pathlib import Path

import psycopg
from live_service import DEFAULT_DSN, compile_dispatcher, descendants, parent_pid

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One process of the service's tree, as seen in ``/proc``."""

    role: str
    command: str
    pss: int
    rss: int
    cpu: float
    """User + system CPU seconds used so far."""


@dataclass(frozen=True)
class Run:
    """What one run measured."""

    first_task: float
    """Seconds from just before the service was started to its first task's start."""
    processes: list[Sample]


def standalone_command(config: Path) -> list[str]:
    """The ``dispatcher-standalone`` command line, beside this Python if installed there."""
    script = Path(sys.executable).with_name("dispatcher-standalone")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "dispatcher.server"]
    return [*prefix, "--log-level", "WARNING", "--config", str(config)]


def memory_kib(pid: int) -> tuple[int, int] | None:
    """``(Pss, Rss)`` of process *pid* in KiB, or ``None`` if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Rss"):
            values[name] = int(rest.split()[0])
    return values["Pss"], values["Rss"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* (not its children), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))


def role(pid: int, main: int, pids: set[int]) -> str:
    """``main``, ``fork server`` (a child of main with children of its own), ``worker``
    (a child of the fork server), else ``other``."""
    if pid == main:
        return "main"
    parent = parent_pid(pid)
    has_children = any(parent_pid(other) == pid for other in pids)
    if parent == main and has_children:
        return "fork server"
    if parent != main and parent in pids:
        return "worker"
    return "other"


def snapshot(main: int) -> list[Sample]:
    """Every live process of the tree rooted at *main*, sorted by role then pid."""
    pids = {main} | descendants(main)
    samples = []
    for pid in sorted(pids):
        sizes = memory_kib(pid)
        if sizes is not None:
            samples.append(
                Sample(role(pid, main, pids), command_line(pid), *sizes, cpu_seconds(pid))
            )
    order = {"main": 0, "fork server": 1, "worker": 2, "other": 3}
    return sorted(samples, key=lambda s: order[s.role])


def one_run(dsn: str, workers: int, idle: float) -> Run:
    channel = f"footprint_{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(dsn, autocommit=True) as conn:
        folder = Path(tmp)
        stamps = folder / "stamps"
        config = {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}},
            "tasks": {"modules": ["bench_tasks"]},
            "service": {
                "node_id": channel,
                "pool": {"min_workers": workers, "max_workers": workers},
            },
        }
        config_path = folder / "dispatcher.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        # sent = 0: the task records its start time itself
        payload = json.dumps({"task": "bench_tasks.stamp", "args": [str(stamps), 0]})
        path = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        env.pop("DISPATCHER_CONFIG_FILE", None)
        log = (folder / "service.log").open("wb")
        started = time.time()
        process = subprocess.Popen(
            standalone_command(config_path), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = time.monotonic() + 60
            while not (stamps.exists() and stamps.read_text().strip()):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.close()
                    sys.exit(f"no task ran:\n{(folder / 'service.log').read_text()}")
                conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                time.sleep(0.005)
            time.sleep(idle)
            first = min(float(line) for line in stamps.read_text().split())
            return Run(first - started, snapshot(process.pid))
        finally:
            leftovers = descendants(process.pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            log.close()


def mib(kib: float) -> str:
    return f"{kib / 1024:6.1f} MiB"


def report(runs: list[Run], workers: int) -> None:
    print(f"dispatcher service, {workers} workers, medians of {len(runs)} runs")
    times = sorted(run.first_task for run in runs)
    print(
        f"  start to first task: {statistics.median(times):.3f} s"
        f" (min {times[0]:.3f}, max {times[-1]:.3f})"
    )
    # The n-th process of each role across runs: the runs' trees have the same shape.
    slots: dict[tuple[str, int], list[Sample]] = {}
    for run in runs:
        seen: dict[str, int] = {}
        for sample in run.processes:
            index = seen.get(sample.role, 0)
            seen[sample.role] = index + 1
            slots.setdefault((sample.role, index), []).append(sample)
    print(f"  {'process':14s} {'PSS':>10s} {'RSS':>10s} {'CPU':>7s}  command")
    for (name, index), samples in slots.items():
        pss = statistics.median(s.pss for s in samples)
        rss = statistics.median(s.rss for s in samples)
        cpu = statistics.median(s.cpu for s in samples)
        label = name if name in ("main", "fork server") else f"{name} {index}"
        print(f"  {label:14s} {mib(pss)} {mib(rss)} {cpu:6.2f}s  {samples[0].command}")
    pss_total = statistics.median(sum(s.pss for s in run.processes) for run in runs)
    rss_total = statistics.median(sum(s.rss for s in run.processes) for run in runs)
    cpu_total = statistics.median(sum(s.cpu for s in run.processes) for run in runs)
    count = statistics.median(len(run.processes) for run in runs)
    print(
        f"  {'total':14s} {mib(pss_total)} {mib(rss_total)} {cpu_total:6.2f}s"
        f"  ({count:g} processes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle before measuring")
    options = parser.parse_args()
    compile_dispatcher()
    runs = [one_run(options.dsn, options.workers, options.idle) for _ in range(options.runs)]
    report(runs, options.workers)


if __name__ == "__main__":
    main()
