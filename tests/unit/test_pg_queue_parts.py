"""The pieces of the pg_queue broker that need no database: backoff, outcomes, results,
migration plans, and how jobs from a broker that schedules them pass the service."""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import Limits
from dispatcher.schema import Outcome, migrations
from dispatcher.server.accounting import Accounting
from dispatcher.server.brokers import BrokerBase, Settled
from dispatcher.server.brokers.pg_queue.acks import WRITE_LIMIT, Acknowledger
from dispatcher.server.brokers.pg_queue.claims import Claimer, ClaimOptions
from dispatcher.server.brokers.pg_queue.leases import Leases
from dispatcher.server.brokers.pg_queue.migrations import (
    MigrationError,
    latest_version,
    plan,
    problem,
)
from dispatcher.server.brokers.pg_queue.outcomes import (
    MAX_ERROR_CHARS,
    REFUSED_DELAY,
    Ack,
    RetryPolicy,
    clean_text,
    parse_receipt,
    to_ack,
)
from dispatcher.server.brokers.pg_queue.sql import Statements
from dispatcher.server.brokers.pg_queue.sweeps import Sweeper
from dispatcher.server.brokers.pg_queue.upkeep import BATCH, Upkeep
from dispatcher.server.brokers.pg_queue.wakeup import MAX_DUE, Wakeup
from dispatcher.server.intake import Intake
from dispatcher.server.jobs import Job
from dispatcher.server.origin import Origin
from dispatcher.server.results import MAX_RESULT_BYTES, encode_result
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.settlement import Settlements
from dispatcher.server.stats import ServiceStats
from support.examples import examples
from support.scheduling import FakeRunner, FakeTimers, make_job


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- backoff -------------------------------------------------------------------------------


def test_retry_delays_double_from_the_backoff_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff=1.0, backoff_max=10.0, jitter=0.0)
    assert [policy.delay(attempt) for attempt in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(10_000) == 10  # no overflow, however many attempts


def test_retry_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(backoff=4.0, backoff_max=100.0, jitter=0.25)
    assert policy.delay(1, uniform=lambda low, high: low) == 3.0
    assert policy.delay(1, uniform=lambda low, high: high) == 5.0
    delays = {policy.delay(1) for _ in range(200)}
    assert all(3.0 <= delay <= 5.0 for delay in delays)
    assert len(delays) > 1


@pytest.mark.anyio
async def test_a_lost_queue_database_is_tried_again_at_least_every_five_seconds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failover of 30 s left services 20 to 25 s more without their database: the delay
    between two attempts to reconnect had doubled up to 30 s meanwhile."""
    with socket.socket() as probe:  # a port nothing listens on: every attempt is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits: list[float] = []

    async def wait(seconds: float) -> None:  # not waited: each attempt logs its delay
        waits.append(seconds)

    from dispatcher.server.brokers.pg_queue import database

    async def on_open(conn: Any) -> None:
        pass

    db = database.QueueDatabase(f"host=127.0.0.1 port={port} connect_timeout=2", "t", on_open)
    monkeypatch.setattr(database.anyio, "sleep", wait)
    with caplog.at_level("DEBUG", logger="dispatcher.pg_queue"):
        for _ in range(12):
            with pytest.raises(database.FAILURES):
                await db.ready()
    delays = [float(d) for d in re.findall(r"retrying in ([0-9.]+) s", caplog.text)]
    assert len(delays) == 12
    assert 0.05 <= delays[0] <= 0.15  # doubling from a tenth of a second
    assert max(delays) <= 5.0
    assert min(delays[7:]) >= 4.5, delays  # up to 5 s, then that


# -- outcomes --------------------------------------------------------------------------------

POLICY = RetryPolicy(backoff=2.0, backoff_max=60.0, jitter=0.0)


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        ("ok", "done"),
        ("cancelled", "cancelled"),
        ("discarded", "cancelled"),
        ("rejected", "failed"),
        ("refused", "requeue"),
        ("abandoned", "requeue"),
        ("error", "retry"),
        ("timeout", "retry"),
        ("worker_lost", "retry"),
        ("killed", "retry"),
        ("memory_exceeded", "retry"),
    ],
)
def test_each_outcome_changes_its_row_in_one_way(outcome: str, kind: str) -> None:
    ack = to_ack(Settled("12:3:4:u", outcome, "why"), POLICY)
    assert ack is not None
    assert (ack.id, ack.attempts, ack.claim, ack.kind, ack.outcome) == (12, 3, 4, kind, outcome)


def test_a_refused_job_waits_a_moment_and_one_given_back_at_shutdown_does_not() -> None:
    refused = to_ack(Settled("1:1:4:u", "refused", "service.limits.max_queued"), POLICY)
    abandoned = to_ack(Settled("1:1:4:u", "abandoned"), POLICY)
    assert refused is not None
    assert abandoned is not None
    assert (refused.delay, abandoned.delay) == (REFUSED_DELAY, 0.0)
    assert REFUSED_DELAY > 0


def test_a_failed_attempt_keeps_its_error_and_traceback_and_waits_its_backoff() -> None:
    settled = Settled(
        "7:3:4:u", "error", "ValueError: no", traceback="Traceback...\nValueError: no\n"
    )
    assert to_ack(settled, POLICY) == Ack(
        7, 3, 4, "retry", "error", "ValueError: no\nTraceback...\nValueError: no", None, 8.0, "u"
    )


def test_a_result_is_kept_for_a_job_done_and_the_note_when_it_was_not() -> None:
    assert to_ack(Settled("1:1:4:u", "ok", result='{"a":1}'), POLICY) == Ack(
        1, 1, 4, "done", "ok", None, '{"a":1}', uuid="u"
    )
    dropped = to_ack(Settled("1:1:4:u", "ok", "result not kept: too big"), POLICY)
    assert dropped is not None
    assert dropped.error == "result not kept: too big"


def test_a_rejected_message_fails_with_the_reason() -> None:
    ack = to_ack(Settled("5:1:4:u", "rejected", "not JSON (Expecting value)"), POLICY)
    assert ack == Ack(5, 1, 4, "failed", "rejected", "not JSON (Expecting value)", uuid="u")


@pytest.mark.parametrize(
    "receipt",
    ["", "12", "12:3", "a:1:1", "1:b:1", "1:1:c", "--1:2:3", "1:2:3", "9" * 20 + ":1:1:u"],
)
def test_receipts_that_are_not_ours_are_ignored(receipt: str) -> None:
    assert parse_receipt(receipt) is None
    assert to_ack(Settled(receipt, "ok"), POLICY) is None


def test_a_row_with_a_negative_id_or_claim_counter_is_still_settled() -> None:
    # Rows inserted by hand may have them (an id given with OVERRIDING SYSTEM VALUE).
    assert parse_receipt("-7:1:1:u") == (-7, 1, 1, "u")
    assert to_ack(Settled("3:1:-4:u", "ok"), POLICY) == Ack(3, 1, -4, "done", "ok", uuid="u")


def test_error_text_is_made_safe_for_postgresql() -> None:
    assert clean_text("a\x00b") == "a\\x00b"
    assert clean_text("bad \udc80 surrogate") == "bad \\udc80 surrogate"
    assert clean_text("é") == "é"
    long = clean_text("START" + "x" * (MAX_ERROR_CHARS + 10) + "END")
    assert long is not None
    assert long.startswith("START")
    assert long.endswith("END")
    assert "\n[... 66 characters left out ...]\n" in long
    assert len(long) <= MAX_ERROR_CHARS


def test_a_long_message_leaves_room_for_its_traceback() -> None:
    message = "ValueError: " + "m" * 40_000
    traceback = "Traceback (most recent call last):\n  File 't.py', line 1, in f\n" + message
    ack = to_ack(Settled("1:1:1:u", "error", message, traceback=traceback, final=True), POLICY)
    assert ack is not None
    assert ack.error is not None
    assert ack.error.startswith("ValueError: mmm")
    assert "\nTraceback (most recent call last):\n  File 't.py', line 1, in f\n" in ack.error
    assert ack.error.endswith("mmm")
    assert ack.error.count("characters left out") == 2
    assert len(ack.error) <= MAX_ERROR_CHARS


# -- results ---------------------------------------------------------------------------------


def test_json_results_are_kept_as_text() -> None:
    # Characters as they are: a SQL_ASCII database's jsonb cannot convert \u escapes.
    assert encode_result({"b": [1, 2.5, "é"], "a": None}) == ('{"b":[1,2.5,"é"],"a":null}', None)


class _ItemsFail(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("no items")


class _IterFails(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise TypeError("cannot iterate")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


class _RaisesUnprintable(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise _Unprintable


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (_ItemsFail(a=1), "no items"),
        ([_IterFails([1])], "JSON cannot hold"),
        (_RaisesUnprintable(a=1), "_Unprintable"),
    ],
)
def test_a_result_whose_encoding_raises_is_dropped_with_a_note(value: object, said: str) -> None:
    text, why = encode_result(value)
    assert text is None
    assert why is not None
    assert why.startswith("result not kept: ")
    assert said in why


@pytest.mark.parametrize(
    ("value", "note"),
    [
        (object(), "result: a value of type object is not JSON-serialisable"),
        (float("nan"), "result: nan is not valid in JSON"),
        ([float("inf")], "result[0]: inf is not valid in JSON"),
        ({"a": [1, {2}]}, "result.a[1]: a value of type set is not JSON-serialisable"),
        ("x" * MAX_RESULT_BYTES, f"more than {MAX_RESULT_BYTES}"),
        ("a\x00b", "NUL"),
        (["\udc80"], "lone surrogate"),
        ("é" * (MAX_RESULT_BYTES // 2), f"more than {MAX_RESULT_BYTES}"),
    ],
)
def test_other_results_are_dropped_with_a_note(value: object, note: str) -> None:
    text, why = encode_result(value)
    assert text is None
    assert why is not None
    assert note in why


@settings(max_examples=examples(400), deadline=None)
@given(
    st.recursive(
        st.text(alphabet=st.sampled_from(["\\", "u", "0", "\x00", "a", '"'])),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(alphabet="\\u0\x00a", max_size=6), inner, max_size=3)
        ),
        max_leaves=6,
    )
)
def test_a_result_is_dropped_for_a_nul_exactly_when_it_holds_one(value: object) -> None:
    holds_nul = _holds_nul(value)
    text, why = encode_result(value)
    assert (text is None) is holds_nul, (value, why)
    if text is not None:
        assert json.loads(text) == value


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(map(_holds_nul, value))
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return False


# -- migrations ------------------------------------------------------------------------------


def test_a_plan_from_scratch_runs_every_migration_in_the_schema() -> None:
    work = plan("jobs_here", 0)
    assert work.pending == list(range(1, latest_version() + 1)) == [m.version for m in migrations()]
    script = work.script()
    assert script.count("BEGIN;") == 1
    assert script.rstrip().endswith("COMMIT;")
    assert """IS NULL THEN CREATE SCHEMA "jobs_here"; END IF""" in script
    assert 'CREATE TABLE "jobs_here".jobs' in script
    statements = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    assert not [line for line in statements if "{schema}" in line]
    assert 'INSERT INTO "jobs_here".migrations (version) VALUES (1)' in script
    assert "pg_advisory_xact_lock" in script


def test_a_plan_at_the_latest_version_does_nothing() -> None:
    work = plan("dispatcher", latest_version())
    assert work.pending == []
    assert work.steps == ()


def test_migrations_never_downgrade() -> None:
    with pytest.raises(MigrationError, match="newer than this version of dispatcher knows"):
        plan("dispatcher", latest_version() + 1)


def test_a_service_is_told_which_command_to_run() -> None:
    latest = latest_version()
    assert problem(latest, "dispatcher", "app.yml") is None
    assert problem(None, "dispatcher", "app.yml") == (
        'the pg_queue tables in schema "dispatcher" are missing: '
        "run 'dispatcherctl migrate --config app.yml'"
    )
    assert problem(0, "q", None) == (
        "the pg_queue tables in schema \"q\" are missing: run 'dispatcherctl migrate'"
    )


# -- the service's side ----------------------------------------------------------------------


class Pool:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> bool:
        self.jobs.append(job)
        return True


def _intake(pool: Pool) -> Intake:
    intake = Intake(pool, ServiceStats(), chunk_expiry=60)
    intake.catalogue.learn(frozenset({"app.work"}))
    return intake


def test_a_job_scheduled_by_its_broker_is_neither_delayed_nor_gated_again() -> None:
    pool = Pool()
    message = json.dumps({"task": "app.work", "uuid": "u1", "delay": 30, "on_duplicate": "serial"})
    scheduled = Origin("pg_queue", channel="q", receipt="1:1", scheduled_by_broker=True)
    _intake(pool).receive(message, "q", scheduled)
    (job,) = pool.jobs
    assert (job.delay, job.key, job.on_duplicate, job.receipt) == (0, None, "serial", "1:1")
    assert json.loads(job.line)["result"] is True  # the worker reports its result


def test_a_job_from_other_brokers_keeps_its_delay_and_gate() -> None:
    pool = Pool()
    message = json.dumps({"task": "app.work", "uuid": "u1", "delay": 30, "on_duplicate": "serial"})
    _intake(pool).receive(message, "q", Origin("spool", channel="q", receipt="r1"))
    (job,) = pool.jobs
    assert job.delay == 30
    assert job.key is not None


def test_identical_serial_jobs_from_the_queue_run_at_once_on_two_workers() -> None:
    stats, workers = ServiceStats(), [FakeRunner(1), FakeRunner(2)]
    scheduler = Scheduler(Limits(), FakeTimers(), stats, lambda: workers)
    for worker in workers:
        scheduler.worker_free(worker)
    pool = Pool()
    intake = _intake(pool)
    for row in (1, 2):
        message = json.dumps({"task": "app.work", "uuid": f"u{row}", "on_duplicate": "serial"})
        origin = Origin("pg_queue", channel="q", receipt=f"{row}:1", scheduled_by_broker=True)
        intake.receive(message, "q", origin)
    for job in pool.jobs:
        scheduler.submit(job)
    assert [worker.job.uuid for worker in workers if worker.job] == ["u1", "u2"]
    assert scheduler.blocked == 0


class Recorder(BrokerBase):
    """A durable broker that records what it is told."""

    def __init__(self) -> None:
        super().__init__("pg_queue")
        self.settled: list[Settled] = []

    async def acknowledge(self, settled: Sequence[Settled]) -> None:
        self.settled.extend(settled)


@pytest.mark.anyio
async def test_a_chunk_envelope_from_a_durable_broker_is_rejected_and_settled() -> None:
    broker = Recorder()
    settlements = Settlements([broker])
    intake = Intake(Pool(), ServiceStats(), chunk_expiry=60, settlements=settlements)
    envelope = {"__dispatcherd_chunk__": "v1", "message_id": "m", "index": 0, "total": 2}
    intake.receive(json.dumps({**envelope, "payload": "{"}), "q", Origin("pg_queue", receipt="3:1"))
    await settlements.flush()
    assert [(s.receipt, s.outcome) for s in broker.settled] == [("3:1", "rejected")]
    assert "whole messages" in str(broker.settled[0].reason)


@pytest.mark.anyio
async def test_outcomes_carry_the_result_and_the_traceback_to_the_broker() -> None:
    broker = Recorder()
    settlements = Settlements([broker])
    accounting = Accounting(ServiceStats(), settlements.job)
    job = make_job()._replace(broker="pg_queue", receipt="1:1:4")
    accounting.finished(job, Outcome.OK, 1, 0.0, 1.0, result="[1,2]")
    accounting.finished(job, Outcome.OK, 1, 0.0, 1.0, result_note="result not kept: big")
    accounting.finished(job, Outcome.ERROR, 1, 0.0, 1.0, "ValueError: no", "Traceback...")
    accounting.lost(job, Outcome.WORKER_LOST, 3, 99, 0.0, 1.0)
    await settlements.flush()
    assert broker.settled == [
        Settled("1:1:4", "ok", None, "[1,2]", ran=1.0),
        Settled("1:1:4", "ok", "result not kept: big", ran=1.0),
        Settled("1:1:4", "error", "ValueError: no", traceback="Traceback...", ran=1.0),
        Settled("1:1:4", "worker_lost", "worker_lost: worker 3 (pid 99) ended with it", ran=1.0),
    ]


@pytest.mark.anyio
async def test_a_retry_due_sooner_cuts_short_a_wait_already_under_way() -> None:
    # The claim loop may be waiting out a long poll_interval when a job is retried with a
    # shorter backoff: the retry must not wait for the poll.
    wakeup = Wakeup()
    done = anyio.Event()

    async def claim_loop() -> None:
        while True:
            await wakeup.wait(60)
            if time.monotonic() >= due:
                done.set()
                return

    async with anyio.create_task_group() as tasks:
        due = time.monotonic() + 0.3
        tasks.start_soon(claim_loop)
        await anyio.sleep(0.05)  # the loop waits now
        wakeup.after(0.3 - 0.05)
        with anyio.fail_after(10):
            await done.wait()
    assert time.monotonic() - due < 5  # not the 60 s poll


@pytest.mark.anyio
async def test_every_retry_time_wakes_the_claim_loop_not_only_the_earliest() -> None:
    # Two retries due at 0.2 s and 0.5 s: the loop (polling every 5 s) wakes at each.
    wakeup = Wakeup()
    wakeup.after(0.2)
    wakeup.after(0.5)
    began = time.monotonic()
    await wakeup.wait(0)  # the first look, which the retries' flag makes at once
    woke = []
    for _ in range(2):
        await wakeup.wait(5)
        woke.append(time.monotonic() - began)
    assert 0.15 < woke[0] < 0.45
    assert 0.45 < woke[1] < 2


@pytest.mark.anyio
async def test_past_its_cap_a_wakeup_still_takes_a_retry_due_sooner() -> None:
    wakeup = Wakeup()
    for _ in range(MAX_DUE):
        wakeup.after(50)
    wakeup.after(60)  # later than every time kept: dropped (a claim at 50 s reads it)
    wakeup.after(0.2)
    began = time.monotonic()
    await wakeup.wait(0)  # the look its flag asks for, at once
    await wakeup.wait(5)
    assert 0.15 < time.monotonic() - began < 2


@pytest.mark.anyio
async def test_the_claim_loop_wakes_when_the_next_waiting_job_becomes_ready() -> None:
    wakeup = Wakeup()
    wakeup.next_job_in(0.2)  # what the claim read: a delayed job ready in 0.2 s
    began = time.monotonic()
    await wakeup.wait(5)
    assert 0.15 < time.monotonic() - began < 2
    wakeup.next_job_in(None)  # none waits: the poll interval
    began = time.monotonic()
    await wakeup.wait(0.3)
    assert time.monotonic() - began >= 0.25


@pytest.mark.anyio
async def test_a_sweep_or_purge_with_endless_rows_due_stops_at_its_deadline() -> None:
    # Millions of rows due at once must not hold up the renewal of leases that follows.
    calls = 0

    async def fetch(statement: bytes, params: Any, **_: object) -> list[tuple[Any, ...]]:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.001)
        return [("q", "queued", 1)] * params["limit"]

    stats = ServiceStats()
    with anyio.fail_after(10):
        sweeper = Sweeper(b"SWEEP", b"SWEEP_ALONE", 3, stats)
        swept = await sweeper.run(fetch, time.monotonic() + 0.05)
    assert swept == calls * BATCH > 0
    db: Any = type("Db", (), {"fetch": staticmethod(fetch)})()
    upkeep = Upkeep(
        db, Statements.for_schema("s"), Any, Any, stats, lease=3, keep_finished=1, queues=["q"]
    )
    with anyio.fail_after(10):
        assert await upkeep.purge(time.monotonic() + 0.05) is False


class _Enough(Exception):
    """Ends the upkeep loop of the test below."""


@pytest.mark.anyio
async def test_leases_are_renewed_within_two_thirds_of_a_lease_however_much_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake clock: each batch of the sweep or the purge takes 0.1 s, and both always have
    # a full batch due. Renewals must come at most lease/3 (the pause) + lease/3 (the
    # round's work) + one batch apart, whatever the backlogs.
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        await anyio.sleep(0)

    async def fetch(statement: bytes, params: Any, **_: object) -> list[tuple[Any, ...]]:
        clock[0] += 0.1
        return [("q", "queued", 1)] * params["limit"]

    renewals: list[float] = []

    class FakeLeases:
        held: ClassVar = {1: (1, 1)}  # a job runs: each renewal reaches the database

        async def renew(self) -> None:
            renewals.append(clock[0])
            if len(renewals) == 8:
                raise _Enough

    class FakeAcks:
        unwritten = False

        async def flush_all(self) -> None:
            pass

        async def wait_unwritten(self, timeout: float) -> None:
            await sleep(timeout)

    from dispatcher.server.brokers.pg_queue import sweeps
    from dispatcher.server.brokers.pg_queue import upkeep as module

    monkeypatch.setattr(module, "time", type("Clock", (), {"monotonic": lambda: clock[0]}))
    monkeypatch.setattr(sweeps, "time", type("Clock", (), {"monotonic": lambda: clock[0]}))
    fake_anyio = {"sleep": staticmethod(sleep), "move_on_after": staticmethod(anyio.move_on_after)}
    monkeypatch.setattr(module, "anyio", type("Anyio", (), fake_anyio))
    db: Any = type("Db", (), {"fetch": staticmethod(fetch)})()
    lease = 3.0
    upkeep = Upkeep(
        db, Statements.for_schema("s"), FakeLeases(), FakeAcks(), ServiceStats(), lease, 1, ["q"]
    )  # type: ignore[arg-type]
    with pytest.raises(_Enough):
        await upkeep.run()
    gaps = [later - earlier for earlier, later in itertools.pairwise(renewals)]
    assert max(gaps) <= 2 * lease / 3 + 0.1 + 1e-9, gaps


@pytest.mark.anyio
async def test_a_claim_that_lost_a_race_and_got_all_it_asked_for_claims_again_at_once() -> None:
    # The first claim meets an identical serial row claimed elsewhere (a unique violation)
    # and is retried with half the limit; getting all of that, the queue is not drained.
    limits: list[int] = []

    class Db:
        async def ready(self) -> None:
            pass

        async def fetch(self, statement: bytes, params: Any) -> list[tuple[Any, ...]]:
            limits.append(params["limit"])
            if len(limits) == 1:
                raise psycopg.errors.UniqueViolation("another service took a twin")
            size = params["limit"]
            first = len(limits) * 100
            return [
                (row, 1, 1, "q", '{"task":"x"}', 12, size, f"u{row}", "x", None, 0.0, None)
                for row in range(first, first + size)
            ]

    class Capacity:
        async def wait_free(self, prefetch: int) -> int:
            if len(limits) >= 3:
                raise _Enough  # claimed again without waiting for a wake-up: done
            return 4

    class Leases:
        def add(self, *claim: object) -> bool:
            return True

    class NoWakeup:
        async def wait(self, timeout: float) -> None:
            raise AssertionError(f"waited for a wake-up after claims of {limits}")

    options = ClaimOptions(["q"], "node", 30, 60.0, 4)
    claimer = Claimer(Db(), b"", options, Capacity(), Leases(), None, ServiceStats())  # type: ignore[arg-type]
    with pytest.raises(_Enough):
        await claimer.run(lambda message, origin: None, NoWakeup())  # type: ignore[arg-type]
    assert limits == [4, 2, 4]


@pytest.mark.anyio
async def test_a_renewal_the_database_does_not_answer_is_given_up_in_time() -> None:
    """A silent partition: the renewal gives up at a third of the lease, so that the next
    round tries again (on a new connection) and the upkeep's other work goes on meanwhile."""
    cancelled: list[bool] = []

    class Silent:
        reconnect_in = 0.0

        async def fetch(self, statement: bytes, params: Any, **_: object) -> list[tuple[Any, ...]]:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(True)  # (a QueueDatabase then closes its connection)
                raise
            return []

    leases = Leases(Silent(), b"renew", 1.5)  # type: ignore[arg-type]
    leases.add(1, 1, 1, time.monotonic(), "u-1")
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(TimeoutError, match=r"did not answer within 0\.5 s"):
        await leases.renew()
    assert 0.5 <= time.monotonic() - started < 5
    assert cancelled == [True]
    # A long lease: bounded as a write of outcomes is.
    assert Leases(Silent(), b"renew", 3600).renew_limit == WRITE_LIMIT  # type: ignore[arg-type]


def test_a_row_claimed_again_while_its_job_is_delivered_is_adopted_not_delivered_twice() -> None:
    leases = Leases(None, b"renew", 30)  # type: ignore[arg-type]
    assert leases.add(7, 1, 1, time.monotonic(), "u-7")
    assert leases.held_until(7, 1, "u-7") > time.monotonic()
    # Its lease ran out and the row was taken back; this service claims it again.
    del leases.held[7]
    assert not leases.add(7, 2, 2, time.monotonic(), "u-7")
    assert leases.held == {7: (2, 2)}
    assert leases.held_until(7, 1, "u-7") > time.monotonic()  # the running copy may still start
    # The copy's outcome settles the later claim (the one the row has).
    [settled] = leases.settling([Ack(7, 1, 1, "done", "ok", uuid="u-7")])
    assert settled == Ack(7, 2, 2, "done", "ok", uuid="u-7")
    assert leases.release(settled) == "u-7"
    assert leases.held == {}
    # Its outcome written: claimed again later, the row is delivered again.
    assert leases.add(7, 3, 3, time.monotonic(), "u-7")
    assert leases.settling([Ack(7, 3, 3, "done", "ok", uuid="u-7")]) == [
        Ack(7, 3, 3, "done", "ok", uuid="u-7")
    ]


def test_a_row_id_given_to_another_job_is_never_settled_by_the_first_jobs_outcome() -> None:
    # A failover lost row 7 (job A, still running here) and gave its id to job B, claimed
    # here with the same numbers.
    leases = Leases(None, b"renew", 30)  # type: ignore[arg-type]
    assert leases.add(7, 1, 1, time.monotonic(), "uuid-A")
    assert leases.add(7, 1, 1, time.monotonic(), "uuid-B")
    assert leases.held_until(7, 1, "uuid-A") == 0.0  # the row is B's now
    # A's outcome is written as A's (its uuid is in the fence: the database refuses it).
    [settled] = leases.settling([Ack(7, 1, 1, "done", "ok", None, '"A"', uuid="uuid-A")])
    assert settled == Ack(7, 1, 1, "done", "ok", None, '"A"', uuid="uuid-A")
    assert leases.release(settled, refused=True) == "uuid-A"
    # B keeps its lease, and its own outcome settles it.
    assert leases.held == {7: (1, 1)}
    assert leases.held_until(7, 1, "uuid-B") > time.monotonic()
    [settled] = leases.settling([Ack(7, 1, 1, "done", "ok", uuid="uuid-B")])
    assert leases.release(settled) == "uuid-B"
    assert leases.held == {}
    # Claimed under another number: A's refused outcome neither names B nor forgets it.
    leases.add(7, 1, 1, time.monotonic(), "uuid-A")
    leases.add(7, 1, 5, time.monotonic(), "uuid-B")
    [settled] = leases.settling([Ack(7, 1, 1, "done", "ok", uuid="uuid-A")])
    assert leases.release(settled, refused=True) == "uuid-A"
    assert not leases.add(7, 2, 6, time.monotonic(), "uuid-B")  # B is not started twice


class _FencedDb:
    """A table of rows by id, each under a claim number, fenced as the acknowledging statement
    is; ``down`` makes every write fail (a partition), ``during`` runs within one."""

    def __init__(self, claims: dict[int, int]) -> None:
        self.claims = claims
        self.down = False
        self.during: list[Any] = []
        self.written: list[tuple[int, int, str]] = []
        self.locked: set[int] = set()
        """Rows another session holds locked: a statement that writes one fails."""
        self.lock_waits = 0

    async def fetch(self, statement: bytes, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if self.down:
            raise OSError("the database is unreachable")
        acks = json.loads(params["acks"])
        if any(ack["id"] in self.locked for ack in acks):
            self.lock_waits += 1
            raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
        for step in self.during:
            step()
        self.during = []
        rows: list[tuple[Any, ...]] = []
        for ack in acks:
            if self.claims.get(ack["id"]) == ack["claims"]:
                del self.claims[ack["id"]]
                self.written.append((ack["id"], ack["claims"], ack["outcome"]))
                state = "queued" if ack["kind"] == "retry" else ack["kind"]
                attempt = None
                if ack["kind"] == "retry":
                    attempt = ["t", "u", ack["attempts"], 3, ack["outcome"], ack["delay"]]
                row = ("q", ack["kind"], state, False, ack["id"], ack["claims"], attempt, False)
                rows.append(row)
        return rows


def _acknowledger(db: _FencedDb, leases: Leases) -> Any:
    return Acknowledger(db, b"ack", leases, RetryPolicy(), 10, ServiceStats())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_rows_locked_by_another_session_hold_back_no_other_outcome_nor_the_upkeep() -> None:
    """Outcomes of rows another session holds locked stay queued, the others are written;
    a write for a new outcome does not wait on the known locked rows again, and a round of
    the upkeep waits on one of them at most (each wait costs the connection its
    lock_timeout, and the renewal of leases waits behind it), in turn, until released."""
    db = _FencedDb({row: 1 for row in range(1, 7)})
    leases = Leases(None, b"renew", 30)  # type: ignore[arg-type]
    acks = _acknowledger(db, leases)
    for row in range(1, 7):
        assert leases.add(row, 1, 1, time.monotonic(), f"u-{row}")
    db.locked = {1, 2, 3}
    for row in range(1, 6):
        acks.add(Ack(row, 1, 1, "done", "ok", uuid=f"u-{row}"))
    await acks.flush()
    assert sorted(row for row, *_ in db.written) == [4, 5]
    assert acks.pending == 3
    db.lock_waits = 0
    acks.add(Ack(6, 1, 1, "done", "ok", uuid="u-6"))
    await acks.flush()  # a job's end: the locked rows are not tried
    assert (db.lock_waits, acks.pending) == (0, 3)
    assert sorted(row for row, *_ in db.written) == [4, 5, 6]
    for _ in range(3):  # the upkeep's rounds: one wait each, on each row in turn
        await acks.flush_all()
        assert (db.lock_waits, acks.pending) == (1, 3)
        db.lock_waits = 0
    db.locked = {2}
    for _ in range(2):  # the released rows are written within two rounds, either way
        await acks.flush_all()
        assert db.lock_waits <= 1
        db.lock_waits = 0
    assert acks.pending == 1
    db.locked = set()
    await acks.flush_all()
    assert sorted(row for row, *_ in db.written) == [1, 2, 3, 4, 5, 6]
    assert (acks.pending, leases.held) == (0, {})


@pytest.mark.anyio
async def test_a_row_claimed_again_while_its_outcome_waits_to_be_written_is_adopted() -> None:
    """The copy ended, but its outcome could not be written (the partition that lost its
    lease): claimed again meanwhile, the row is not run again, and that outcome, recorded
    against the new claim, is not refused."""
    db = _FencedDb({7: 1})
    leases = Leases(None, b"renew", 30)  # type: ignore[arg-type]
    acks = _acknowledger(db, leases)
    assert leases.add(7, 1, 1, time.monotonic(), "u-7")
    del leases.held[7]  # the partition: the lease ran out, another service swept the row
    acks.add(Ack(7, 1, 1, "done", "ok", uuid="u-7"))
    db.down = True
    with pytest.raises(OSError, match="unreachable"):
        await acks.flush()
    assert acks.pending == 1
    # The partition heals; this service claims the row again before its next write.
    db.down, db.claims[7] = False, 2
    assert not leases.add(7, 2, 2, time.monotonic(), "u-7")
    assert leases.held == {7: (2, 2)}
    await acks.flush()
    assert db.written == [(7, 2, "ok")]
    assert (acks.pending, leases.held) == (0, {})
    # Written: claimed again later, the row is delivered again.
    assert leases.add(7, 3, 3, time.monotonic(), "u-7")


@pytest.mark.anyio
async def test_a_row_claimed_again_while_its_outcome_is_being_written_waits_for_the_write() -> None:
    """Claimed again while the write is under way: if the write was refused (the row was
    swept and claimed again before it), the outcome settles the new claim; if it was
    recorded (a retry put the row back), the new claim is a new attempt, and delivered."""
    # Refused: the row was taken back and claimed again just before the write.
    db = _FencedDb({7: 1})
    leases = Leases(None, b"renew", 30)  # type: ignore[arg-type]
    acks = _acknowledger(db, leases)
    delivered: list[int] = []
    assert leases.add(7, 1, 1, time.monotonic(), "u-7", delivered.append, 1)
    acks.add(Ack(7, 1, 1, "done", "ok", uuid="u-7"))

    def taken_back() -> None:
        db.claims[7] = 2
        assert not leases.add(7, 2, 2, time.monotonic(), "u-7", delivered.append, 2)

    db.during = [taken_back]
    await acks.flush()
    assert db.written == [(7, 2, "ok")]
    assert (acks.pending, leases.held, delivered) == (0, {}, [])

    # Recorded: the retry put the row back, and this service claimed it at once.
    db = _FencedDb({8: 1})
    leases = Leases(None, b"renew", 30)  # type: ignore[arg-type]
    acks = _acknowledger(db, leases)
    assert leases.add(8, 1, 1, time.monotonic(), "u-8", delivered.append, 1)
    acks.add(Ack(8, 1, 1, "retry", "error", "boom", delay=1.0, uuid="u-8"))

    def claimed_again() -> None:
        assert not leases.add(8, 2, 2, time.monotonic(), "u-8", delivered.append, 2)

    db.during = [claimed_again]
    await acks.flush()
    db.claims[8] = 2
    assert db.written == [(8, 1, "error")]
    assert (acks.pending, leases.held, delivered) == (0, {8: (2, 2)}, [2])
    acks.add(Ack(8, 2, 2, "done", "ok", uuid="u-8"))
    await acks.flush()
    assert db.written[-1] == (8, 2, "ok")
    assert leases.held == {}
