"""The durable queues' depth, sampled every few seconds for the metrics endpoint.

One query every :data:`SAMPLE_INTERVAL` seconds, whatever the scrape rate: for each queue of
``brokers.pg_queue.queues``, the jobs ready now, the jobs waiting for a later time, and how
long the oldest ready job has waited. Scrapes read the last sample. Counts stop at
:data:`COUNT_CAP` per queue, so that a huge backlog never makes the sample itself a load
(the age of the oldest job still tells how far behind the queue is). Every service samples
the same tables: aggregate their gauges with ``max``, not ``sum``. While sampling fails, the
last sample stays for :data:`KEEP_LAST_SAMPLE` seconds (a reconnect does not blank its
series), then it is dropped: a service that lost the database does not report the backlog
it last saw for ever (which, under ``max``, would hide that the backlog drained).
:attr:`QueueSampler.ok` and :attr:`QueueSampler.sampled_at` say whether and when sampling
last worked.

The service starts one sampler when metrics are on and ``brokers.pg_queue`` is configured;
the broker need not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus
from psycopg import sql

from dispatcher.publish import describe_server
from dispatcher.publish.connection_settings import connection_options
from dispatcher.server.backoff import Backoff
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.resources import names_shortages
from dispatcher.server.stats import QueueDepth, QueueSampling

logger = get_logger("dispatcher.pg_queue.sampler")

SAMPLE_INTERVAL: Final = 5.0
"""Seconds between two samples."""
COUNT_CAP: Final = 100_000
"""Most jobs counted per queue and kind (ready, delayed): a larger backlog reads as this."""
STATEMENT_TIMEOUT_MS: Final = 5000
"""A sample that takes longer is cancelled by the server (and tried again later)."""
KEEP_LAST_SAMPLE: Final = 30.0
"""Seconds a sample is exported after it was taken while no newer one comes: long enough
for a reconnect (the retries back off from :data:`SAMPLE_INTERVAL`: 5, 10, 20 s), short
enough that a service that lost the database stops reporting the depth it last saw."""

_QUERY: Final = """
WITH clock AS MATERIALIZED (SELECT pg_catalog.clock_timestamp() AS now)
SELECT q.name,
  (SELECT pg_catalog.count(*) FROM (SELECT FROM {jobs} j WHERE j.state = 'queued'
     AND j.queue = q.name AND j.run_after <= clock.now LIMIT %(cap)s) ready),
  (SELECT pg_catalog.count(*) FROM (SELECT FROM {jobs} j WHERE j.state = 'queued'
     AND j.queue = q.name AND j.run_after > clock.now LIMIT %(cap)s) delayed),
  (SELECT coalesce(extract(epoch FROM clock.now - pg_catalog.min(j.run_after)), 0)::float8
     FROM {jobs} j WHERE j.state = 'queued' AND j.queue = q.name AND j.run_after <= clock.now)
FROM pg_catalog.unnest(%(queues)s::text[]) AS q(name), clock
"""
"""Ready and delayed jobs, and the oldest ready job's age, per queue.

"Now" is read after the statement's snapshot is taken (``clock_timestamp()``, once): a job
whose insert committed just before the snapshot was stamped with its transaction's start,
which may be later than this statement's own ``now()``; compared with that, it would count
as delayed.
"""


_LOCAL_SETTINGS: Final = b"""
SELECT pg_catalog.set_config(s.name, s.value, true)
FROM (VALUES ('statement_timeout', %(timeout)s), ('jit', 'off')) AS s(name, value)
JOIN pg_catalog.pg_settings AS p USING (name)
WHERE s.name = 'statement_timeout'
   OR p.source NOT IN ('client', 'user', 'database', 'database user')
"""
"""The sample's own settings, for its transaction only: its timeout, and JIT off unless the
operator turned it on (as on the broker's connections). Set in the transaction rather than
at connection (``options``), which a pooler such as pgbouncer refuses, and rather than on
the session, which through a pooler in transaction mode would reach other clients."""


@names_shortages  # (out of threads or file descriptors: an OSError, retried as one)
async def sampling_connection(
    conninfo: str, application_name: str, connect_timeout: int = 10
) -> psycopg.AsyncConnection[Any]:
    """A connection for :meth:`QueueSampler.sample`, which prepares no statement.

    (A sample runs every few seconds: preparing saves nothing, and a pooler in transaction
    mode loses prepared statements between transactions.)
    """
    # A server gone silently is noticed, as elsewhere.
    options = connection_options(conninfo) | {"prepare_threshold": None}
    return await psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        application_name=application_name,
        connect_timeout=connect_timeout,
        **options,
    )


class QueueSampler:
    """Keeps :attr:`depths` of the durable queues up to date while :meth:`run` runs."""

    def __init__(
        self,
        conninfo: str,
        schema: str,
        queues: Sequence[str],
        application_name: str,
        interval: float = SAMPLE_INTERVAL,
        keep_last: float = KEEP_LAST_SAMPLE,
    ) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.queues = tuple(queues)
        self.application_name = application_name
        self.interval = interval
        self.keep_last = keep_last
        """Seconds :meth:`sampling` exports a sample for after it was taken."""
        self.depths: dict[str, QueueDepth] = {}
        """The last successful sample, by queue; empty before the first one (kept while
        sampling fails; :meth:`sampling` leaves it out once it is too old)."""
        self.samples = 0
        """Samples taken so far."""
        self.sampled_at: float | None = None
        """When (seconds since the epoch) the last successful sample was taken, if one was."""
        self._sampled_since: float | None = None
        """When the last successful sample was taken, on ``time.monotonic()``: its age, which
        a step of the wall clock does not change."""
        self.ok = False
        """Whether the last attempt to sample succeeded (``False`` before the first)."""
        self._query = sql.SQL(_QUERY).format(jobs=sql.SQL("{}.jobs").format(sql.Identifier(schema)))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sample every :attr:`interval` seconds until cancelled, reconnecting as needed."""
        task_status.started()
        backoff = Backoff(initial=self.interval, maximum=max(60.0, self.interval))
        failing = False
        while True:
            try:
                conn = await self._connect()
                try:
                    while True:
                        await self.sample(conn)
                        if failing:
                            logger.info("sampling the durable queues' depth again")
                            failing = False
                        backoff.reset()
                        await anyio.sleep(self.interval)
                finally:
                    with anyio.CancelScope(shield=True):
                        await conn.close()
            except (psycopg.Error, OSError) as exc:
                self.ok = False
                if not failing:
                    logger.warning(
                        "cannot sample the durable queues' depth in %s (%s); trying again",
                        describe_server(self.conninfo),
                        first_line(exc),
                    )
                    failing = True
                await anyio.sleep(backoff.next_delay())

    async def sample(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, QueueDepth]:
        """Take one sample over *conn*; store it in :attr:`depths` and return it."""
        async with conn.transaction():
            await conn.execute(_LOCAL_SETTINGS, {"timeout": f"{STATEMENT_TIMEOUT_MS}ms"})
            query = {"cap": COUNT_CAP, "queues": list(self.queues)}
            cursor = await conn.execute(self._query, query)
            rows = await cursor.fetchall()
        self.depths = {
            name: QueueDepth(ready=ready, delayed=delayed, oldest_ready_age=age)
            for name, ready, delayed, age in rows
        }
        self.samples += 1
        self.sampled_at, self._sampled_since, self.ok = time.time(), time.monotonic(), True
        return self.depths

    def sampling(self) -> QueueSampling:
        """What the metrics export: the configured queues, the last sample, and its age.

        The sample is left out once it is older than :attr:`keep_last` seconds, as the
        monotonic clock counts them (a step of the wall clock neither drops it early nor
        keeps it for ever).
        """
        since = self._sampled_since
        fresh = since is not None and time.monotonic() - since <= self.keep_last
        depths = dict(self.depths) if fresh else {}
        return QueueSampling(self.queues, depths, self.sampled_at, self.ok)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await sampling_connection(self.conninfo, self.application_name)
