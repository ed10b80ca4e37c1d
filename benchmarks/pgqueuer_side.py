"""PgQueuer's side of the durable-queue benchmark, run by ``durable.py`` in PgQueuer's own venv.

Not part of dispatcher and never imported by it: ``durable.py`` installs PgQueuer (with
asyncpg) into a virtual environment of its own and runs this file with that Python.

    pgqueuer_side.py install DSN
    pgqueuer_side.py consume [--dequeuers 5] [--batch-size 10] DSN
    pgqueuer_side.py produce --jobs N [--batch 1000] DSN

DSN is a ``postgresql://`` URI.

``consume`` runs QueueManagers (one connection each, PgQueuer's own benchmark defaults: 5
of them, batches of 10) with a no-op entrypoint until SIGTERM; it prints ``ready`` once
they are built. ``produce`` connects, prints ``ready``, waits for a line on stdin, then
enqueues the jobs in batches (one statement per batch) and prints ``done``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

ENTRYPOINT = "noop"


async def install(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


async def consume(dsn: str, dequeuers: int, batch_size: int) -> None:
    managers = []
    for _ in range(dequeuers):
        manager = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(dsn))))

        @manager.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            """Do nothing: the benchmark measures the queue."""

        managers.append(manager)
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, lambda: [m.shutdown.set() for m in managers])
    print("ready", flush=True)
    await asyncio.gather(*(m.run(batch_size=batch_size) for m in managers))


async def produce(dsn: str, jobs: int, batch: int) -> None:
    connection = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(connection))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for first in range(0, jobs, batch):
        size = min(batch, jobs - first)
        await queries.enqueue([ENTRYPOINT] * size, [None] * size, [0] * size)
    print("done", flush=True)
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install").add_argument("dsn")
    consumer = commands.add_parser("consume")
    consumer.add_argument("dsn")
    consumer.add_argument("--dequeuers", type=int, default=5)
    consumer.add_argument("--batch-size", type=int, default=10)
    producer = commands.add_parser("produce")
    producer.add_argument("dsn")
    producer.add_argument("--jobs", type=int, required=True)
    producer.add_argument("--batch", type=int, default=1000)
    options = parser.parse_args()
    if options.command == "install":
        work = install(options.dsn)
    elif options.command == "consume":
        work = consume(options.dsn, options.dequeuers, options.batch_size)
    else:
        work = produce(options.dsn, options.jobs, options.batch)
    try:
        import uvloop  # PgQueuer depends on it and its own benchmark runs on it
    except ImportError:
        asyncio.run(work)
    else:
        uvloop.run(work)


if __name__ == "__main__":
    main()
