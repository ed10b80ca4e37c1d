"""The durable queues' metrics: depth sampled from the table, counters, Prometheus text."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.server.brokers.pg_queue.sampler import QueueSampler, sampling_connection
from dispatcher.server.metrics import render
from dispatcher.server.stats import QueueDepth, QueueSampling, ServiceStats
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.metrics import Samples, free_port, scrape
from support.queue_rows import insert_job, unique_schema
from support.service import Evidence, ServiceProcess, wait_until


class Source:
    """What the metrics endpoint reads, with a sampler for the durable queues."""

    def __init__(self, sampler: QueueSampler | None) -> None:
        self.stats = ServiceStats()
        self.sampler = sampler

    def worker_statuses(self) -> dict[str, int]:
        return {}

    def counts(self) -> dict[str, Any]:
        return {"queued": 0, "blocked": 0, "delayed": 0}

    def queue_sampling(self) -> QueueSampling | None:
        return None if self.sampler is None else self.sampler.sampling()

    def registered_tasks(self) -> frozenset[str]:
        return frozenset()


def exposition(source: Source) -> tuple[str, Samples]:
    text = "".join(render(source))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


async def sample_once(sampler: QueueSampler, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await sampler.sample(conn)


@pytest.fixture
def schema(pg_conn: psycopg.Connection[Any]) -> str:
    return migrated(pg_conn, unique_schema())


def test_depth_gauges_and_counters_by_queue(
    pg_conn: psycopg.Connection[Any], pg_dsn: str, schema: str
) -> None:
    for waited in (5, 30, 120):
        insert_job(pg_conn, schema, queue="mail", run_after=-waited)
    for _ in range(2):
        insert_job(pg_conn, schema, queue="mail", run_after=600)
    insert_job(pg_conn, schema, queue="mail", state="running")
    insert_job(pg_conn, schema, queue="mail", state="failed")
    insert_job(pg_conn, schema, queue="unlisted")
    sampler = QueueSampler(pg_dsn, schema, ["mail", "jobs"], "test-sampler")
    anyio.run(sample_once, sampler, pg_dsn)
    source = Source(sampler)
    source.stats.pg_queue_claims["mail"] += 7
    source.stats.pg_queue_retries["mail"] += 2
    source.stats.pg_queue_failures["mail"] += 1
    source.stats.pg_queue_lease_expiries["jobs"] += 1
    text, found = exposition(source)
    assert found[("dispatcher_pg_queue_ready_jobs", (("queue", "mail"),))] == 3
    assert found[("dispatcher_pg_queue_delayed_jobs", (("queue", "mail"),))] == 2
    oldest = found[("dispatcher_pg_queue_oldest_ready_age_seconds", (("queue", "mail"),))]
    assert 120 <= oldest < 150
    for family in ("ready_jobs", "delayed_jobs", "oldest_ready_age_seconds"):
        assert found[(f"dispatcher_pg_queue_{family}", (("queue", "jobs"),))] == 0
    assert found[("dispatcher_pg_queue_claims_total", (("queue", "mail"),))] == 7
    assert found[("dispatcher_pg_queue_claims_total", (("queue", "jobs"),))] == 0
    assert found[("dispatcher_pg_queue_retries_total", (("queue", "mail"),))] == 2
    assert found[("dispatcher_pg_queue_failures_total", (("queue", "mail"),))] == 1
    assert found[("dispatcher_pg_queue_lease_expiries_total", (("queue", "jobs"),))] == 1
    assert "unlisted" not in text
    assert "# TYPE dispatcher_pg_queue_claims_total counter" in text
    assert found[("dispatcher_pg_queue_sample_ok", ())] == 1
    assert 0 < time.time() - found[("dispatcher_pg_queue_sampled_timestamp_seconds", ())] < 60


def test_counters_of_every_configured_queue_are_exported_before_anything_happens(
    pg_dsn: str, schema: str
) -> None:
    """At 0, and before any sample: a series that appears only once it moves (the first
    lease expiry) cannot be alerted on."""
    source = Source(QueueSampler(pg_dsn, schema, ["mail", "jobs"], "test-sampler"))
    _, found = exposition(source)
    for counter in ("claims", "retries", "failures", "lease_expiries"):
        for queue in ("mail", "jobs"):
            assert found[(f"dispatcher_pg_queue_{counter}_total", (("queue", queue),))] == 0
    assert found[("dispatcher_pg_queue_sample_ok", ())] == 0
    assert found[("dispatcher_pg_queue_sampled_timestamp_seconds", ())] == 0
    assert not [name for name, _ in found if name == "dispatcher_pg_queue_ready_jobs"]


def sample_then_fail(sampler: QueueSampler, pg_conn: psycopg.Connection[Any], schema: str) -> None:
    """Run *sampler* until it has sampled once, then until sampling fails (table renamed)."""

    async def run() -> None:
        async with anyio.create_task_group() as group:
            await group.start(sampler.run)
            with anyio.fail_after(10):
                while not sampler.samples:
                    await anyio.sleep(0.01)
                pg_conn.execute(f"ALTER TABLE {schema}.jobs RENAME TO jobs_away")
                while sampler.ok:
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()

    anyio.run(run)


def test_while_sampling_fails_the_last_sample_stays_a_while_and_says_when_it_was_taken(
    pg_conn: psycopg.Connection[Any], pg_dsn: str, schema: str
) -> None:
    """Series that vanish while the sampler reconnects would silence the alerts on them."""
    insert_job(pg_conn, schema, queue="mail")
    sampler = QueueSampler(pg_dsn, schema, ["mail", "jobs"], "test-sampler", interval=0.05)
    source = Source(sampler)
    source.stats.pg_queue_claims["mail"] += 1
    sample_then_fail(sampler, pg_conn, schema)
    _, found = exposition(source)
    assert found[("dispatcher_pg_queue_ready_jobs", (("queue", "mail"),))] == 1
    assert found[("dispatcher_pg_queue_ready_jobs", (("queue", "jobs"),))] == 0
    assert found[("dispatcher_pg_queue_sample_ok", ())] == 0
    sampled = found[("dispatcher_pg_queue_sampled_timestamp_seconds", ())]
    assert sampled == sampler.sampled_at
    assert 0 < time.time() - sampled < 60
    assert found[("dispatcher_pg_queue_claims_total", (("queue", "mail"),))] == 1
    assert found[("dispatcher_pg_queue_lease_expiries_total", (("queue", "jobs"),))] == 0


def test_a_sample_older_than_its_grace_is_dropped_while_health_and_counters_stay(
    pg_conn: psycopg.Connection[Any], pg_dsn: str, schema: str
) -> None:
    """A service that lost the database must not report the backlog it last saw for ever:
    with ``max`` across services, its old 10,000 ready jobs would hide a drained queue."""
    for _ in range(3):
        insert_job(pg_conn, schema, queue="mail", run_after=-60)
    sampler = QueueSampler(
        pg_dsn, schema, ["mail", "jobs"], "test-sampler", interval=0.05, keep_last=0.5
    )
    source = Source(sampler)
    source.stats.pg_queue_claims["mail"] += 1
    sample_then_fail(sampler, pg_conn, schema)
    sampled_at = sampler.sampled_at
    assert sampled_at is not None

    def dropped() -> Samples | None:
        _, found = exposition(source)
        return None if ("dispatcher_pg_queue_ready_jobs", (("queue", "mail"),)) in found else found

    found = wait_until(dropped, timeout=10)
    assert time.time() - sampled_at > 0.5
    depth_families = ("ready_jobs", "delayed_jobs", "oldest_ready_age_seconds")
    assert not [n for n, _ in found if n.removeprefix("dispatcher_pg_queue_") in depth_families]
    assert found[("dispatcher_pg_queue_sample_ok", ())] == 0
    assert found[("dispatcher_pg_queue_sampled_timestamp_seconds", ())] == sampled_at
    for queue, claims in (("mail", 1), ("jobs", 0)):
        assert found[("dispatcher_pg_queue_claims_total", (("queue", queue),))] == claims
        assert found[("dispatcher_pg_queue_lease_expiries_total", (("queue", queue),))] == 0


@pytest.mark.parametrize("step", [3600.0, -3600.0])
def test_a_step_of_the_wall_clock_neither_drops_a_sample_early_nor_keeps_it_for_ever(
    pg_conn: psycopg.Connection[Any],
    pg_dsn: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    step: float,
) -> None:
    """The grace of the last sample is counted on the monotonic clock: a wall clock stepped
    forward (an NTP correction) would blank the depth of a service that merely reconnects,
    one stepped back would report its last backlog long after it lost the database."""
    insert_job(pg_conn, schema, queue="mail", run_after=-60)
    sampler = QueueSampler(pg_dsn, schema, ["mail"], "test-sampler", interval=0.05, keep_last=2)
    source = Source(sampler)
    sample_then_fail(sampler, pg_conn, schema)
    sampled_at = sampler.sampled_at
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + step)
    ready = ("dispatcher_pg_queue_ready_jobs", (("queue", "mail"),))
    _, found = exposition(source)
    assert found.get(ready) == 1  # kept: sampled less than keep_last ago
    assert found[("dispatcher_pg_queue_sampled_timestamp_seconds", ())] == sampled_at
    begun = time.monotonic()

    def dropped() -> Samples | None:
        _, found = exposition(source)
        return None if ready in found else found

    found = wait_until(dropped, timeout=10)
    assert time.monotonic() - begun > 1  # not before keep_last, whatever the wall clock says
    assert found[("dispatcher_pg_queue_sampled_timestamp_seconds", ())] == sampled_at


def test_a_job_committed_as_the_sample_starts_counts_as_ready(
    pg_conn: psycopg.Connection[Any], pg_dsn: str, schema: str
) -> None:
    """A job's run_after is its insert's start, which may come after the sample's own start.

    The sample below runs in a transaction begun before the insert, so its ``now()`` is
    earlier than the job's run_after while its snapshot (taken per statement) sees the job:
    what happens in autocommit when the insert commits between the two.
    """
    sampler = QueueSampler(pg_dsn, schema, ["mail"], "test-sampler")

    async def sample_across_the_insert() -> QueueDepth:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            began = await (await conn.execute("SELECT now()")).fetchone()
            insert_job(pg_conn, schema, queue="mail")
            inserted = pg_conn.execute(
                f"SELECT run_after FROM {schema}.jobs WHERE queue = 'mail'"
            ).fetchone()
            assert began is not None
            assert inserted is not None
            assert inserted[0] > began[0]
            return (await sampler.sample(conn))["mail"]

    depth = anyio.run(sample_across_the_insert)
    assert (depth.ready, depth.delayed) == (1, 0)


def test_a_sample_sets_nothing_on_its_session_and_prepares_nothing(
    pg_dsn: str, schema: str
) -> None:
    """As a pooler in transaction mode needs: its sessions are shared, and forget prepared
    statements. (Its timeout went in the connection's startup options, which pgbouncer
    refuses: the metrics had no queue depth behind it.)"""
    sampler = QueueSampler(pg_dsn, schema, ["mail"], "test-sampler")

    async def sample_then_look() -> tuple[Any, ...]:
        conn = await sampling_connection(pg_dsn, "test-sampler")
        async with conn:
            for _ in range(8):
                await sampler.sample(conn)
            cursor = await conn.execute(
                "SELECT current_setting('statement_timeout'), current_setting('jit'),"
                " (SELECT count(*) FROM pg_prepared_statements)"
            )
            row = await cursor.fetchone()
            assert row is not None
            return tuple(row)

    with psycopg.connect(pg_dsn) as plain:
        row = plain.execute(
            "SELECT current_setting('statement_timeout'), current_setting('jit'), 0::bigint"
        ).fetchone()
    assert row is not None
    assert anyio.run(sample_then_look) == tuple(row)  # the session's settings as they were


def test_no_durable_queue_families_without_pg_queue() -> None:
    text, _ = exposition(Source(None))
    assert "dispatcher_pg_queue" not in text


def test_the_sampler_keeps_sampling_and_follows_the_table(
    pg_conn: psycopg.Connection[Any], pg_dsn: str, schema: str
) -> None:
    sampler = QueueSampler(pg_dsn, schema, ["mail"], "test-sampler", interval=0.05)

    async def watch() -> list[int]:
        seen: list[int] = []
        async with anyio.create_task_group() as group:
            await group.start(sampler.run)
            with anyio.fail_after(10):
                while sampler.samples < 2:
                    await anyio.sleep(0.01)
                seen.append(sampler.depths["mail"].ready)
                insert_job(pg_conn, schema, queue="mail")
                first = sampler.samples
                while sampler.samples < first + 2:
                    await anyio.sleep(0.01)
                seen.append(sampler.depths["mail"].ready)
            group.cancel_scope.cancel()
        return seen

    assert anyio.run(watch) == [0, 1]


def test_a_sampler_that_cannot_connect_reports_nothing_and_warns_once(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = QueueSampler(pg_dsn, unique_schema(), ["mail"], "test-sampler", interval=0.05)

    async def run_a_while() -> None:
        with anyio.move_on_after(0.5):
            await sampler.run()

    with caplog.at_level(logging.WARNING, logger="dispatcher.pg_queue.sampler"):
        anyio.run(run_a_while)
    assert sampler.depths == {}
    assert (sampler.ok, sampler.sampled_at) == (False, None)
    warnings = [r.getMessage() for r in caplog.records if r.name.endswith("sampler")]
    assert len(warnings) == 1
    assert "cannot sample the durable queues' depth" in warnings[0]
    assert 'relation "' in warnings[0]


def test_a_service_exports_the_durable_queue_families(
    start_service: Callable[..., ServiceProcess],
    pg_conn: psycopg.Connection[Any],
    pg_dsn: str,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    for _ in range(2):
        insert_job(pg_conn, schema, queue=channel, run_after=3600)  # delayed: never claimed
    config = queue_config(pg_dsn, schema, channel)
    port = free_port()
    config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
    start_service(config).wait_for_log(r"serving metrics on")
    uuids = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
    wait_for_states(pg_conn, schema, uuids, {"done"})
    queue = (("queue", channel),)

    def exported() -> Samples | None:
        # A sample taken between the job's insert and its claim still counts it as ready:
        # wait for one taken after (the sampler samples every few seconds).
        found = scrape(port)
        claimed = found.get(("dispatcher_pg_queue_claims_total", queue))
        ready = found.get(("dispatcher_pg_queue_ready_jobs", queue))
        return found if claimed == 1 and ready == 0 else None

    found = wait_until(exported, timeout=15)
    assert found[("dispatcher_pg_queue_delayed_jobs", queue)] == 2
    assert found[("dispatcher_pg_queue_ready_jobs", queue)] == 0
    assert found[("dispatcher_pg_queue_oldest_ready_age_seconds", queue)] == 0
    for counter in ("retries", "failures", "lease_expiries"):
        assert found[(f"dispatcher_pg_queue_{counter}_total", queue)] == 0
