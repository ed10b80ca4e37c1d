"""Soak: a steady load at half the service's capacity for a long time; does memory grow?

Run with ``hatch run bench-soak [--duration SECONDS] [--rate TASKS_PER_S] [--dsn DSN]``
(not run in CI; the default lasts 10 minutes). It starts ``dispatcher-standalone`` with
``--workers`` workers and, unless ``--rate`` is given, measures its capacity first: a burst
of no-op tasks published in batches, timed until the service's ``status`` counts them all
finished. Then it publishes no-op tasks at half that rate, evenly (a small batch every
``--tick`` seconds), for ``--duration`` seconds, sampling the resident memory (VmRSS) of the
main process and of each of its descendants (the fork server and the workers) every
``--sample-every`` seconds. At the end it reports tasks sent and run, losses, and memory at
the start and end of the steady phase with its growth. Exit status 1 if a task was lost or
the service died.

With ``--mixed``, a mixed load instead (pg_notify tasks, durable jobs delayed, failing,
retried, timing out and ``on_duplicate``, cancels, a schedule, worker recycling, reloads,
control commands, the service's connections terminated), with memory, fds, threads,
connections, ``status`` and table rows sampled, and every task accounted for: see
``soak_mixed.py``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from live_service import DEFAULT_DSN, LiveService, descendants, mib, parent_pid, rss_bytes
from soak_mixed import run_mixed

from dispatcher.config import setup
from dispatcher.publish import batch, close_connections, submit_task

NOOP = "bench_tasks.noop"


def publish(service: LiveService, count: int) -> None:
    """Publish *count* no-op tasks on the service's channel, 1,000 per round trip."""
    for first in range(0, count, 1000):
        with batch():
            for _ in range(min(1000, count - first)):
                submit_task(NOOP, queue=service.channel)


def wait_finished(service: LiveService, target: int, timeout: float) -> int:
    """Wait until the service has finished *target* tasks in all; return its count."""
    deadline = time.monotonic() + timeout
    while (finished := service.finished()) < target and time.monotonic() < deadline:
        time.sleep(0.05)
    return finished


def capacity(service: LiveService, count: int) -> float:
    """Tasks per second the service runs when *count* no-op tasks arrive at once."""
    publish(service, 200)  # warm-up
    base = wait_finished(service, 200, timeout=60)
    started = time.perf_counter()
    publish(service, count)
    done = wait_finished(service, base + count, timeout=300) - base
    return done / (time.perf_counter() - started)


class Memory:
    """Samples of resident memory: the main process, and each descendant by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.main: list[int] = []
        self.children: dict[int, list[int]] = {}

    def sample(self) -> None:
        main = rss_bytes(self.pid)
        if main is not None:
            self.main.append(main)
        for child in descendants(self.pid):
            size = rss_bytes(child)
            if size is not None:
                self.children.setdefault(child, []).append(size)

    def last_children(self) -> dict[int, int]:
        alive = descendants(self.pid)
        return {pid: sizes[-1] for pid, sizes in self.children.items() if pid in alive}


def growth(first: float, last: float) -> str:
    return f"{(last - first) / first * 100:+.1f} %" if first else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--duration", type=float, default=600, help="seconds of steady load")
    parser.add_argument(
        "--rate", type=float, default=None, help="tasks/s (default: half of the capacity measured)"
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--measure-tasks", type=int, default=20_000, help="burst that measures the capacity"
    )
    parser.add_argument(
        "--sample-every", type=float, default=5.0, help="seconds between memory samples"
    )
    parser.add_argument("--tick", type=float, default=0.05, help="seconds between two batches")
    parser.add_argument("--mixed", action="store_true", help="the mixed load (soak_mixed.py)")
    parser.add_argument("--max-tasks-per-worker", type=int, default=200, help="with --mixed")
    parser.add_argument(
        "--keep-finished", type=float, default=120, help="with --mixed: retention of jobs"
    )
    parser.add_argument(
        "--warm-up", type=float, default=120, help="with --mixed: seconds before growth counts"
    )
    parser.add_argument("--keep", action="store_true", help="with --mixed: keep its folder")
    parser.add_argument("--log-level", default="WARNING", help="with --mixed: the service's")
    options = parser.parse_args()
    if options.mixed:
        options.rate = 100.0 if options.rate is None else options.rate
        folder = Path(tempfile.mkdtemp(prefix="dispatcher-soak-"))
        try:
            return run_mixed(options, folder)
        finally:
            if not options.keep:
                shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="dispatcher-soak-") as tmp:
        service = LiveService(Path(tmp), options.dsn, options.workers, log_level="WARNING")
        setup({"version": 1, "brokers": {"pg_notify": {"conninfo": options.dsn}}})
        try:
            service.start()
            return soak(service, options)
        finally:
            close_connections()
            service.stop()


def soak(service: LiveService, options: argparse.Namespace) -> int:
    if options.rate is None:
        measured = capacity(service, options.measure_tasks)
        rate = measured / 2
        print(
            f"capacity: {measured:,.0f} tasks/s ({options.workers} workers); soak at {rate:,.0f} tasks/s"
        )
    else:
        rate = options.rate
        print(f"soak at {rate:,.0f} tasks/s (given)")
    finished_before = service.finished()
    memory = Memory(service.pid)
    memory.sample()
    first_children = memory.last_children()
    sent = 0
    started = time.monotonic()
    next_sample = started + options.sample_every
    next_report = started + 60
    while (now := time.monotonic()) - started < options.duration:
        due = int((now - started) * rate) - sent  # steady: catch up with the clock
        if due > 0:
            publish(service, due)
            sent += due
        if now >= next_sample:
            memory.sample()
            next_sample += options.sample_every
            if not service.running():
                print("the service exited during the soak")
                return 1
        if now >= next_report:
            print(
                f"  {now - started:5.0f} s: {sent:,} sent, main {mib(memory.main[-1])},"
                f" workers {mib(sum(memory.last_children().values()))}",
                flush=True,
            )
            next_report += 60
        time.sleep(max(0.0, min(options.tick, started + options.duration - time.monotonic())))
    elapsed = time.monotonic() - started
    run = wait_finished(service, finished_before + sent, timeout=60) - finished_before
    memory.sample()
    last_children = memory.last_children()
    lost = sent - run
    status = service.status()
    print(f"steady phase: {elapsed:.0f} s at {rate:,.0f} tasks/s ({sent / elapsed:,.0f} achieved)")
    print(f"  tasks sent {sent:,}, run {run:,}, lost {lost:,}")
    print(f"  finished by outcome: {status['finished']}; workers lost {status['pool']['lost']}")
    main_first, main_last = memory.main[0], memory.main[-1]
    print(
        f"  main process RSS: {mib(main_first)} -> {mib(main_last)}"
        f" ({growth(main_first, main_last)}; highest sample {mib(max(memory.main))})"
    )
    for pid in sorted(first_children.keys() | last_children.keys()):
        first, last = first_children.get(pid), last_children.get(pid)
        role = "worker" if parent_pid(pid) != service.pid else "child"
        change = growth(first, last) if first and last else "(started or ended during the soak)"
        print(f"  {role} {pid} RSS: {mib(first)} -> {mib(last)} {change}")
    total_first, total_last = sum(first_children.values()), sum(last_children.values())
    print(
        f"  all descendants RSS: {mib(total_first)} -> {mib(total_last)}"
        f" ({growth(total_first, total_last)})"
    )
    return 0 if lost == 0 and service.running() else 1


if __name__ == "__main__":
    raise SystemExit(main())
