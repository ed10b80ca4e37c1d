"""The statements that renew the leases of claimed jobs and record their outcomes.

See :mod:`.sql` for how the statements are written and assembled for a schema.
"""

from __future__ import annotations

from dispatcher.server.brokers.pg_queue.sql_shared import WAKE, Uses

_RENEW = """
WITH held AS MATERIALIZED (
    SELECT h.*, 'running' AS state{wait}
    FROM ROWS FROM (pg_catalog.unnest(%(ids)s::bigint[]),
        pg_catalog.unnest(%(attempts)s::integer[]), pg_catalog.unnest(%(claims)s::integer[]),
        pg_catalog.unnest(%(uuids)s::text[]))
        AS h(id, attempts, claims, uuid)
), ours AS MATERIALIZED (
    SELECT h.id
    FROM held AS h CROSS JOIN LATERAL (
        SELECT j.state, j.claims, j.attempts, j.uuid FROM {s}.jobs AS j WHERE j.id = h.id OFFSET 0
    ) AS j
    WHERE j.state = h.state AND j.claims = h.claims AND j.attempts = h.attempts
      AND j.uuid = h.uuid
), free AS MATERIALIZED (
    SELECT j.id
    FROM held AS h CROSS JOIN LATERAL (
        SELECT j.id FROM {s}.jobs AS j
        WHERE j.id = h.id AND j.state = h.state AND j.claims = h.claims
          AND j.attempts = h.attempts AND j.uuid = h.uuid
        FOR UPDATE OF j{skip}
    ) AS j
), renewed AS (
    UPDATE {s}.jobs AS j
    SET lease_until = pg_catalog.now() + pg_catalog.make_interval(secs => %(lease)s)
    WHERE j.id = ANY(ARRAY(SELECT f.id FROM free AS f))
    RETURNING j.id
)
SELECT o.id, r.id IS NOT NULL AS renewed FROM ours AS o LEFT JOIN renewed AS r ON r.id = o.id
"""

RENEW = _RENEW.replace("{wait}", "").replace("{skip}", " SKIP LOCKED")
"""Extend the leases of the claims still held (each fenced as :data:`ACKNOWLEDGE` is, its
job's uuid included); returns the rows still ours, each with whether its lease was extended.

A row that another transaction holds locked is skipped, not waited for: the others are
renewed all the same. It comes back as still ours (read without a lock, from the
statement's snapshot) but not renewed, and :data:`RENEW_WAITING` tries it again at once;
a row that is no longer ours (its lease ran out and it was taken back, or an operator
changed it) does not come back at all. The row locks cost a renewal little: it runs every
``lease / 3`` seconds, not once per job.

The lock may well be one of our own statements': a claim or a sweep of another service
(or a purge, the write of an outcome) that met the row just as it changed (claimed, or
renewed, after the statement began) locks it although it leaves it alone. PostgreSQL locks
the row's latest version before it checks the statement's conditions on it again (read
committed), and keeps the lock when the row no longer meets them, until that statement
ends: milliseconds. No condition written in the statement can keep it from doing so.

The rows are found by id, whatever the plan's estimates: ``j.state`` is compared with a
column of a materialized CTE, not with the constant ``'running'``, so the jobs_running
index cannot be chosen instead (a partial index whose dead entries pile up between two
vacuums: a bitmap scan of it reads them all, for every batch); each lateral subquery (kept
apart by ``OFFSET 0``, or by its lock) can only look its row up by id."""

RENEW_WAITING = _RENEW.replace(
    "{wait}", ",\n        pg_catalog.set_config('lock_timeout', %(lock_wait)s, true) AS lock_wait"
).replace("{skip}", "")
""":data:`RENEW` for the rows it found locked, waiting for each at most ``lock_wait`` (a
``lock_timeout``: ``'50ms'``), set for this statement alone before it locks a row, whatever
the session's. Long enough for a statement of another service that holds the row (see
:data:`RENEW`) to end, short enough that a lock held for long (an operator's transaction)
costs the renewals and outcomes behind it little; when one row stays locked that long, the
statement fails (``LockNotAvailable``) and renews none of its rows: they wait for the next
renewal."""

RENEW_USES = Uses(reads=("id", "uuid", "state", "claims", "attempts"), writes=("lease_until",))
"""The columns of ``jobs`` that :data:`RENEW` (and :data:`RENEW_WAITING`) reads and writes."""

ACKNOWLEDGE = """
WITH settled AS (
    SELECT * FROM pg_catalog.json_to_recordset(%(acks)s::json) AS s(
        id bigint, attempts integer, claims integer, kind text, outcome text, error text,
        result text, delay float8, uuid text
    )
), target AS MATERIALIZED (
    SELECT s.*, j.state, j.max_attempts, CASE
            WHEN s.kind = 'retry' AND j.attempts >= j.max_attempts THEN 'failed'
            WHEN s.kind IN ('retry', 'requeue') AND j.on_duplicate = 'queue_one'
                 AND {waiting_twin} THEN 'cancelled'
            WHEN s.kind IN ('retry', 'requeue') THEN 'queued'
            ELSE s.kind
        END AS next,
        {woken} AS woken
    FROM settled AS s CROSS JOIN LATERAL (
        SELECT j.state, j.claims, j.attempts, {ack_limit} AS max_attempts, j.on_duplicate,
            j.dup_key, j.outcome, j.last_error, j.uuid, j.queue
        FROM {s}.jobs AS j WHERE j.id = s.id OFFSET 0
    ) AS j
    WHERE j.claims = s.claims AND j.attempts = s.attempts AND j.uuid = s.uuid
      AND (j.state = 'running'
           OR j.state = 'failed' AND j.outcome = 'worker_lost' AND s.kind <> 'requeue'
              AND j.last_error LIKE 'worker_lost: the lease of node %%')
)
UPDATE {s}.jobs AS j
SET state = t.next,
    attempts = CASE WHEN t.kind = 'requeue' THEN j.attempts - 1 ELSE j.attempts END,
    max_attempts = t.max_attempts,
    run_after = CASE
        WHEN t.next <> 'queued' OR t.kind = 'requeue' AND t.delay = 0 THEN j.run_after
        ELSE pg_catalog.now() + pg_catalog.make_interval(secs => t.delay) END,
    lease_until = NULL,
    finished_at = CASE WHEN t.next = 'queued' THEN NULL ELSE pg_catalog.now() END,
    outcome = CASE WHEN t.kind = 'requeue' THEN j.outcome ELSE t.outcome END,
    last_error = CASE
        WHEN t.kind = 'requeue' THEN j.last_error
        WHEN t.next = 'cancelled' AND t.kind <> 'cancelled'
            THEN 'an identical job was already waiting (on_duplicate queue_one)'
        ELSE t.error END,
    result = CASE WHEN t.next = 'done' THEN t.result::jsonb END
FROM target AS t
WHERE j.id = ANY(ARRAY[t.id])
  AND j.state = t.state AND j.claims = t.claims AND j.attempts = t.attempts
RETURNING j.queue, t.kind, j.state, j.on_duplicate IN ('serial', 'queue_one'), j.id, j.claims,
    CASE WHEN t.kind = 'retry'
        THEN pg_catalog.json_build_array(
            j.task, j.uuid, j.attempts, j.max_attempts, t.outcome, t.delay)
    END,
    t.state <> 'running'
""".replace(
    "{woken}",
    WAKE.replace("{when}", "s.kind = 'requeue' AND s.delay = 0").replace("{queue}", "j.queue"),
)
"""Record a batch of outcomes (see :mod:`.outcomes` for the kinds), given as one JSON array of
objects (encoding it costs a microsecond per row; psycopg's arrays cost ten times that). A
retry waits for its backoff, or fails once the row's ``max_attempts`` are used (its task's
declared one when the row has the queue's default, which the row then keeps: see
:mod:`.limits`); a requeue
(refused, abandoned: the job never ran) waits again, its attempt not counted: at once when
abandoned, in its place (its ``run_after`` as it was: a queue's rows are claimed oldest
first, and one that waited from the time it was given back went behind every job stored
meanwhile), for its ``delay`` when refused.

The fence: the row is still under the claim the outcome settles (its claim number and
attempt, and its job's uuid: a failover that lost a row may have given its id to another
job, even under the same numbers), running; or the claim's lease ran out, a sweep failed
the row as lost (``worker_lost``, no attempt left, the error ``sql_sweeps.SWEEP`` writes) and
nobody claimed it since, so that the late outcome of the job (which did run, or end) is
the truth (a job handed back unstarted, ``requeue``, leaves such a row as it is). The
second case is only looked at for a row that is not running: the common one costs nothing
more. A job handed back unstarted wakes the services of its queue (see ``sql_shared.WAKE``): it
is ready at once (an identical queue_one job waiting may cancel it instead: a wake-up for
nothing, then).

It takes no row lock before its update (a lock per row would write each tuple twice): a
row locked by another session makes it wait, for the working connection's
``lock_timeout`` at most (see :mod:`.acks`).

It returns for every row its queue, the outcome's kind, the row's new state, whether it is
a serial or queue_one job (its end lets an identical job start), its id and claim number;
for a failed attempt, its task, uuid, attempts, ``max_attempts``, outcome and delay (a JSON
array), for the log line saying what became of it; and whether the outcome came late (over
a sweep's ``worker_lost``). Each row is found by id,
whatever the plan's estimates (see :data:`RENEW`): the lateral subquery (kept apart by
``OFFSET 0``) can only look its row up by id, and the update compares ``j.state`` with the
state the target read, not with a constant."""

ACKNOWLEDGE_USES = Uses(
    reads=(
        "id", "uuid", "queue", "task", "state", "claims", "attempts", "max_attempts",
        "on_duplicate", "dup_key", "run_after", "outcome", "last_error",
    ),
    writes=(
        "state", "attempts", "max_attempts", "run_after", "lease_until", "finished_at",
        "outcome", "last_error", "result",
    ),
)  # fmt: skip
"""The columns of ``jobs`` that :data:`ACKNOWLEDGE` reads and writes."""
