"""End-to-end service benchmark: throughput, main-process CPU per task, and latency.

Run with ``hatch run bench-service [--dsn DSN]``. It starts ``dispatcher-standalone`` with
``--workers`` workers and, for each backlog size, publishes that many no-op tasks over
pg_notify in batches, then waits until all have run. It reports tasks/s and the CPU time the
service's main process spent per task (read from /proc, so workers are not counted; it
should stay flat as the backlog grows). Then it sends single tasks to idle workers, 3 ms apart,
and reports the NOTIFY-to-task-start latency (p50, p99) beside the floor of this
machine: a bare NOTIFY to an asyncio listener in another process. Medians over ``--runs``.

With ``--message-bytes 165,2100,7500,40000`` it measures instead what the size of a message
costs: for each size, ``--sized-backlog`` tasks whose ``args`` are padded with a string so
that each message's JSON text is about that many bytes (a message over the NOTIFY limit goes
as chunk envelopes, as ``submit_task`` sends it), reporting the main-process CPU per task
and per NOTIFY. Published as fast as possible, large messages arrive more slowly (PostgreSQL
is then the bottleneck), so each wake-up of the service finds fewer of them and its cost per
task rises for that reason alone; ``--rate 5000`` publishes every size at the same rate, which
separates what the size costs from what the rate does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from live_service import compile_dispatcher

from dispatcher.config import setup
from dispatcher.publish import batch, close_connections, prepare_submission, submit_task
from dispatcher.schema import service_application_name

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the service")
        time.sleep(0.005)


def start_service(
    folder: Path, dsn: str, channel: str, workers: int, log_level: str = "WARNING"
) -> subprocess.Popen[bytes]:
    """Start ``dispatcher-standalone`` (node id = *channel*) and wait until it listens.

    At the default WARNING level no per-task line is written; ``INFO`` measures their cost.
    """
    config = {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}},
        "tasks": {"modules": ["bench_tasks"]},
        "service": {"node_id": channel, "pool": {"min_workers": workers, "max_workers": workers}},
    }
    (folder / "dispatcher.yml").write_text(json.dumps(config))
    log = (folder / "service.log").open("wb")
    command = [
        *(sys.executable, "-m", "dispatcher.server"),
        *("--log-level", log_level, "--config", str(folder / "dispatcher.yml")),
    ]
    # The benchmark's tasks after the caller's path: PYTHONPATH naming another checkout's
    # sources measures that code (an A/B comparison).
    given = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (given, str(HERE)))))
    process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        name = service_application_name(channel, [channel])
        wait_for(lambda: conn.execute(query, (name,)).fetchone() == (1,), timeout=30)
    return process


def throughput(pid: int, folder: Path, count: int) -> tuple[float, float]:
    """Run *count* tasks; return (tasks per second, main-process CPU microseconds per task)."""
    path = folder / f"ticks-{uuid.uuid4().hex}"
    path.touch()
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    for first in range(0, count, 1000):
        with batch():
            for _ in range(min(1000, count - first)):
                submit_task("bench_tasks.tick", args=[str(path)])
    wait_for(lambda: path.stat().st_size >= count, timeout=300)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    return count / elapsed, cpu / count * 1e6


SIZED_TASK = "bench_tasks.tick_sized"


def padding_for(size: int, path: Path) -> str:
    """The padding argument that makes a task message's JSON text about *size* bytes."""
    base = len(prepare_submission(SIZED_TASK, args=[str(path), ""]).payloads[0])
    return "x" * max(0, size - base)


def sized_throughput(
    pid: int, folder: Path, count: int, size: int, rate: float | None = None
) -> tuple[float, float, int, int]:
    """Run *count* tasks of messages of about *size* bytes, at most *rate* per second.

    Returns (tasks per second, main-process CPU microseconds per task, NOTIFYs per task, the
    size of a message's JSON text).
    """
    path = folder / f"ticks-{uuid.uuid4().hex}"
    path.touch()
    padding = padding_for(size, path)
    sample = prepare_submission(SIZED_TASK, args=[str(path), padding])
    notifies = len(sample.payloads)
    actual = len(json.dumps(sample.message, separators=(",", ":")))
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    per_batch = max(1, 1000 // notifies) if rate is None else max(1, int(rate) // 100)
    due = started
    for first in range(0, count, per_batch):
        with batch():
            for _ in range(min(per_batch, count - first)):
                submit_task(SIZED_TASK, args=[str(path), padding])
        if rate is not None:  # a batch every 10 ms
            due += per_batch / rate
            time.sleep(max(0.0, due - time.perf_counter()))
    wait_for(lambda: path.stat().st_size >= count, timeout=600)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    return count / elapsed, cpu / count * 1e6, notifies, actual


def report_sizes(
    pid: int, folder: Path, sizes: list[int], backlog: int, runs: int, rate: float | None
) -> None:
    """Print, for each message size, the main-process CPU per task (medians of *runs*).

    With *rate*, every size is published at that rate: the main process's cost per task
    depends on how many tasks each of its wake-ups finds, so sizes compare at equal rates.
    """
    sized_throughput(pid, folder, 200, sizes[0])  # warm-up of the sized task
    for size in sizes:
        results = [sized_throughput(pid, folder, backlog, size, rate) for _ in range(runs)]
        achieved = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        notifies, actual = results[0][2:]
        print(
            f"  message {actual:6d} B, {notifies} NOTIFY/task, backlog {backlog}: "
            f"{achieved:8,.0f} tasks/s, main-process CPU {cpu:6.1f} us/task "
            f"({cpu / notifies:6.1f} us/NOTIFY)"
        )


def latencies(dsn: str, channel: str, folder: Path, count: int) -> list[float]:
    """Send *count* single tasks 3 ms apart (workers idle); return NOTIFY-to-start delays in ms.

    Sent exactly as :func:`raw_latencies` sends its NOTIFYs, so the two compare.
    """
    path = folder / f"stamps-{uuid.uuid4().hex}"
    path.touch()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            payload = json.dumps({"task": "bench_tasks.stamp", "args": [str(path), time.time()]})
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            time.sleep(0.003)
    wait_for(lambda: len(path.read_text().splitlines()) >= count, timeout=30)
    return [float(line) * 1000 for line in path.read_text().splitlines()]


def _listen_and_time(dsn: str, channel: str, count: int, ready: Any, results: Any) -> None:
    async def listen() -> list[float]:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute(f'LISTEN "{channel}"')
        ready.set()
        delays: list[float] = []
        async for notify in conn.notifies():
            delays.append((time.time() - float(notify.payload)) * 1000)
            if len(delays) == count:
                return delays
        return delays

    results.put(asyncio.run(listen()))


def raw_latencies(dsn: str, count: int) -> list[float]:
    """The floor: NOTIFY to a bare asyncio psycopg listener in another process, in ms."""
    channel = f"raw_{uuid.uuid4().hex[:12]}"
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    listener = context.Process(target=_listen_and_time, args=(dsn, channel, count, ready, results))
    listener.start()
    ready.wait(30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            conn.execute("SELECT pg_notify(%s, %s)", (channel, repr(time.time())))
            time.sleep(0.003)
    delays: list[float] = results.get(timeout=30)
    listener.join()
    return delays


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backlogs", default="1000,5000,20000")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument(
        "--message-bytes",
        help="comma-separated message sizes in bytes (e.g. 165,2100,7500,40000): measure the "
        "main-process CPU per task for each size, instead of the backlogs and latency",
    )
    parser.add_argument(
        "--sized-backlog", type=int, default=5000, help="tasks per run with --message-bytes"
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="with --message-bytes: publish at this many tasks per second (else as fast as "
        "possible), so that every size is compared at the same rate",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the service's log level (INFO writes a line per task: measures what they cost)",
    )
    options = parser.parse_args()
    compile_dispatcher()
    channel = f"bench_{uuid.uuid4().hex[:12]}"
    setup(
        {"version": 1, "brokers": {"pg_notify": {"conninfo": options.dsn, "channels": [channel]}}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        service = start_service(folder, options.dsn, channel, options.workers, options.log_level)
        try:
            throughput(service.pid, folder, 200)  # warm-up: workers started, code paths hot
            print(
                f"dispatcher service, {options.workers} workers, log level {options.log_level},"
                f" medians of {options.runs} runs"
            )
            if options.message_bytes:
                sizes = [int(size) for size in options.message_bytes.split(",")]
                report_sizes(
                    service.pid, folder, sizes, options.sized_backlog, options.runs, options.rate
                )
                return
            for backlog in (int(b) for b in options.backlogs.split(",")):
                runs = [throughput(service.pid, folder, backlog) for _ in range(options.runs)]
                rate = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                print(
                    f"  backlog {backlog:6d}: {rate:8,.0f} tasks/s, main-process CPU {cpu:6.1f} us/task"
                )
            samples = options.latency_samples
            ours = [latencies(options.dsn, channel, folder, samples) for _ in range(options.runs)]
            floor = [raw_latencies(options.dsn, samples) for _ in range(options.runs)]
            for label, measured in (
                ("NOTIFY-to-task-start", ours),
                ("bare NOTIFY-to-listener", floor),
            ):
                p50 = statistics.median(percentile(s, 0.5) for s in measured)
                p99 = statistics.median(percentile(s, 0.99) for s in measured)
                print(f"  {label:24s} latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        finally:
            service.terminate()
            service.wait(30)
            close_connections()


if __name__ == "__main__":
    main()
