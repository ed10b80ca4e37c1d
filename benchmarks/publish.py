"""Publishing throughput from one process: one NOTIFY per submission vs. ``batch()``.

Run with ``hatch run bench-publish [--dsn DSN]``. Two rates per case, medians of several
runs: *published* (until PostgreSQL has accepted every NOTIFY) and *delivered* (until a
LISTENing connection in another process has received them all), and the sender's CPU time
per message. The baseline is a bare ``SELECT pg_notify(...)`` per message on one connection.
Each run measures every case in turn, and the ratio to the baseline is the median of the
ratios within a run: on a machine shared with other work, the rates drift from one minute
to the next, and cases measured minutes apart would not compare.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from dispatcher.config import setup
from dispatcher.publish import batch, close_connections, task


@task(name="benchmarks.publish.noop")  # named: a task of the script run is warned about
def noop(n: int) -> None:
    """A task that is only ever submitted here."""


def _count_notifies(dsn: str, channel: str, count: int, ready: Any, done: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        ready.set()
        seen = sum(1 for _ in listener.notifies(timeout=120, stop_after=count))
    if seen == count:
        done.set()


def rates(
    dsn: str, channel: str, count: int, send: Callable[[int], None]
) -> tuple[float, float, float]:
    """Messages per second (published, delivered), both from the first send, and the
    sender's CPU seconds per message (until published).

    The listener runs in its own process, so it does not compete with the sender for the GIL.
    """
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    listener = context.Process(target=_count_notifies, args=(dsn, channel, count, ready, done))
    listener.start()
    ready.wait(30)
    start, cpu_start = time.perf_counter(), time.process_time()
    send(count)
    published = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    done.wait(120)
    delivered = time.perf_counter() - start
    listener.join()
    if not done.is_set():
        raise SystemExit(f"only part of {count} messages arrived")
    return count / published, count / delivered, cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--single", type=int, default=5_000, help="messages per unbatched run")
    parser.add_argument("--batched", type=int, default=50_000, help="messages per batched run")
    options = parser.parse_args()
    channel = f"bench_{uuid.uuid4().hex[:12]}"
    pg_notify = {"conninfo": options.dsn, "channels": [channel]}
    setup({"version": 1, "brokers": {"pg_notify": pg_notify}})

    with psycopg.connect(options.dsn, autocommit=True) as raw:

        def bare_notify(count: int) -> None:
            for n in range(count):
                raw.execute("SELECT pg_notify(%s, %s)", (channel, f'{{"task":"x","args":[{n}]}}'))

        def one_per_delay(count: int) -> None:
            for n in range(count):
                noop.delay(n)

        def batched(count: int) -> None:
            with batch():
                for n in range(count):
                    noop.delay(n)

        cases = [
            ("bare pg_notify, one per statement", bare_notify, options.single),
            (".delay(), one NOTIFY each", one_per_delay, options.single),
            ("with batch(): .delay()", batched, options.batched),
        ]
        runs: list[dict[str, tuple[float, float, float]]] = []
        for _ in range(options.runs):
            runs.append({label: rates(options.dsn, channel, n, send) for label, send, n in cases})
    close_connections()

    baseline = cases[0][0]
    print(
        f"messages per second, median of {options.runs} runs "
        "(ratio: published vs. the baseline of the same run)"
    )
    print(f"  {'':36s}  {'published':>10s}  {'delivered':>10s}  {'ratio':>6s}  {'CPU/msg':>8s}")
    for label, _, _ in cases:
        published, delivered, cpu = (
            statistics.median(run[label][i] for run in runs) for i in (0, 1, 2)
        )
        ratio = statistics.median(run[label][0] / run[baseline][0] for run in runs)
        print(
            f"  {label:36s}: {published:10,.0f}  {delivered:10,.0f}  {ratio:5.2f}x"
            f"  {cpu * 1e6:5.1f} µs"
        )


if __name__ == "__main__":
    main()
