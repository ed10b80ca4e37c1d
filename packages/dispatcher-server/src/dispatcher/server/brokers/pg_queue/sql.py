"""The statements of the pg_queue broker, for one PostgreSQL schema.

Each runs alone, in autocommit: no transaction stays open while a job runs. Every change to
a claimed row is fenced: it applies only while the row is ``running`` with the claim number
and attempt number it was claimed with (a row swept back after its lease ran out, or
retried by an operator, and claimed again, ignores the old claim's renewals and outcome).
The claim number (``claims``) counts every claim of the row and is never reset. Parameters
are named (``%(name)s``); arrays travel whole, so that one statement serves a whole batch.

The services plan each statement once (generic plans: see :mod:`.database`), so each is
written to need no estimate to be right: rows are looked up by id, and the partial
indexes are used only by the scans that want them. Rows that a part of the statement found
are then written (or read again) through their ids, never through a plain join with
``jobs``: all at once, ``j.id = ANY(ARRAY(SELECT ...))``, or, when the update needs more of
what was found, one row at a time, ``j.id = ANY(ARRAY[t.id])`` (a condition the planner can
only use as an index lookup for each row, not to join two whole tables). When the table
looked empty to the planner (the statistics a VACUUM of the drained table leaves), a plain
join was planned as a scan of the whole table for each row found.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, QUEUE_WAKEUP_IF_ROOM
from dispatcher.server.brokers.pg_queue.migrations import quoted

FINAL_STATES = ("done", "failed", "cancelled")
"""The states a job ends in."""


@dataclass(frozen=True)
class Uses:
    """The columns of a table that a statement reads, and those it writes.

    What a role needs of that table for it: ``SELECT`` on each column read and ``UPDATE``
    on each written, whether granted on the table or on those columns alone (see
    :mod:`.privileges`). A column only assigned, never read, needs no ``SELECT``.
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...] = ()


_WAITING_TWIN = """EXISTS (
            SELECT 1 FROM {s}.jobs AS w
            WHERE w.state = 'queued' AND w.on_duplicate = 'queue_one' AND w.dup_key = j.dup_key)"""
"""A queue_one row going back to wait while an identical one already waits (at most one
may: the jobs_one_waiting index); it is cancelled instead."""

_WAKE = f"""CASE WHEN {{when}} AND {QUEUE_WAKEUP_IF_ROOM}
            THEN pg_catalog.pg_notify('{QUEUE_WAKEUP_CHANNEL}', {{queue}}) IS NULL END"""
"""Wake the services of the queue ``{queue}`` (a NOTIFY on the wake-up channel, sent at
commit) when ``{when}``: a row ready again without being stored (given back unstarted, or
taken back from a dead service) has no publisher to wake them, and they would find it only
at their next poll (``poll_interval``, the fallback for lost wake-ups). Not while the
server's NOTIFY queue is half full or more (see ``dispatcher.schema.QUEUE_WAKEUP_IF_ROOM``).
PostgreSQL sends one NOTIFY per queue however many rows call it in a statement."""

_LIMIT = """CASE WHEN j.max_attempts = %(default_attempts)s THEN greatest({least}, coalesce((
            SELECT d.n
            FROM ROWS FROM (pg_catalog.unnest(%(limit_tasks)s::text[]),
                pg_catalog.unnest(%(limit_values)s::integer[])) AS d(task, n)
            WHERE d.task = j.task LIMIT 1), j.max_attempts)) ELSE j.max_attempts END"""
"""The row's ``max_attempts``, or its task's declared one (``limit_tasks``, ``limit_values``)
when the row has the queue's default (``default_attempts``), never below ``{least}`` (the
attempt it is at): see :mod:`.limits`."""

_CLAIMABLE = """j.state = 'queued' AND j.run_after <= pg_catalog.now()
          AND (j.on_duplicate IS NULL OR j.on_duplicate = 'discard' OR NOT EXISTS (
                SELECT 1 FROM {s}.jobs AS r
                WHERE r.state = 'running' AND r.dup_key = j.dup_key
                  AND r.on_duplicate IN ('serial', 'queue_one')))"""
"""A row ``j`` a claim may take (its queue aside): ready, and no identical serial or
queue_one job running."""

_FAIR_CANDIDATES = """active AS (
    SELECT q.name, pg_catalog.row_number() OVER (ORDER BY q.turn) - 1 AS seat,
        pg_catalog.count(*) OVER () AS n
    FROM pg_catalog.unnest(%(queues)s::text[]) WITH ORDINALITY AS q(name, turn)
    CROSS JOIN LATERAL (
        SELECT 1 FROM {s}.jobs AS j WHERE j.queue = q.name AND {claimable} LIMIT 1
    ) AS ready
), candidates AS MATERIALIZED (
    SELECT c.*, a.seat, a.quota
    FROM (
        SELECT a.name, a.seat, greatest(1, %(limit)s::bigint / a.n
            + CASE WHEN a.seat < %(limit)s::bigint %% a.n THEN 1 ELSE 0 END) AS quota
        FROM active AS a
    ) AS a
    CROSS JOIN LATERAL (
        SELECT l.*, pg_catalog.row_number() OVER () AS rank
        FROM (
            SELECT j.id, j.dup_key, j.run_after, pg_catalog.octet_length(j.message) AS size
            FROM {s}.jobs AS j
            WHERE j.queue = a.name AND {claimable}
            ORDER BY j.run_after, j.id
            LIMIT a.quota
            FOR UPDATE SKIP LOCKED
        ) AS l
    ) AS c
    LIMIT %(limit)s
)"""
"""The rows a claim over several queues reads: a quota of each queue that has a ready row,
each queue's oldest first, in turns (see :data:`CLAIM`)."""

_SINGLE_CANDIDATES = """candidates AS MATERIALIZED (
    SELECT j.id, j.dup_key, j.run_after, pg_catalog.octet_length(j.message) AS size
    FROM {s}.jobs AS j
    WHERE j.queue = (%(queues)s::text[])[1] AND {claimable}
    ORDER BY j.run_after, j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)"""
"""The rows a claim of one queue reads: its oldest ready rows (see :data:`CLAIM`)."""

_CLAIM = """
WITH quick AS (
    SELECT pg_catalog.set_config('synchronous_commit', 'off', true) AS commit_mode
), {candidates}, chosen AS (
    SELECT DISTINCT ON (coalesce(c.dup_key, c.id::text)) c.*
    FROM candidates AS c
    ORDER BY coalesce(c.dup_key, c.id::text), c.run_after, c.id
), claimed AS (
    SELECT o.id FROM (
        SELECT c.id, pg_catalog.sum(c.size) OVER (ORDER BY {order}) - c.size AS before
        FROM chosen AS c, quick
        ORDER BY {order} LIMIT %(limit)s
    ) AS o
    WHERE o.before < %(max_total_bytes)s
), taken AS (
    UPDATE {s}.jobs AS j
    SET state = 'running', attempts = j.attempts + 1, claims = j.claims %% 2147483647 + 1,
        max_attempts = {claim_limit}, node_id = %(node_id)s,
        lease_until = pg_catalog.now() + pg_catalog.make_interval(secs => %(lease)s),
        started_at = pg_catalog.now()
    WHERE j.id = ANY(ARRAY(SELECT c.id FROM claimed AS c))
    RETURNING j.id, j.attempts, j.claims, j.queue,
        CASE WHEN pg_catalog.octet_length(j.message) <= %(max_bytes)s
            THEN j.message END AS message,
        pg_catalog.octet_length(j.message) AS size,
        (SELECT {read} FROM candidates AS c) AS candidates,
        j.uuid, j.task, j.on_duplicate,
        CASE WHEN j.outcome IS NULL AND pg_catalog.isfinite(j.run_after)
                AND pg_catalog.isfinite(j.created_at)
            THEN extract(epoch FROM j.run_after - j.created_at)::float8 END AS delay
)
SELECT t.*, NULL::float8 AS next_in FROM taken AS t
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, (
    SELECT extract(epoch FROM pg_catalog.min(n.run_after) - pg_catalog.now())::float8
    FROM pg_catalog.unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT w.run_after FROM {s}.jobs AS w
        WHERE w.queue = q.name AND w.state = 'queued' AND w.run_after > pg_catalog.now()
          AND w.run_after < 'infinity'
        ORDER BY w.run_after
        LIMIT 1
    ) AS n)
WHERE (SELECT pg_catalog.count(*) FROM taken) < %(limit)s
"""

CLAIM = _CLAIM.replace(
    "{candidates}", _FAIR_CANDIDATES
).replace(
    "{order}", "c.rank, c.seat"
).replace(
    "{read}",
    "pg_catalog.count(*)"
    " + CASE WHEN pg_catalog.bool_or(c.rank >= c.quota) THEN %(limit)s ELSE 0 END",
)  # fmt: skip
"""Claim up to ``limit`` ready rows, shared fairly among the ``queues``, at most one per serial
or queue_one key and none whose twin runs: running under a lease, one attempt more.

Fairness: the queues that have a ready row (one index probe each) take turns in the order
listed, each given a quota of ``limit`` shared among them (one more to the first ones when
it does not divide evenly; one each to the first ``limit`` when they are more than
``limit``). Each queue hands over its oldest ready rows in order (``run_after``, id: the
jobs_ready index), up to its quota, skipping those another claim holds; the claim keeps the
first ``limit`` rows so read (a queue whose rows are all held leaves its turn to the next).
So a busy queue does not hold up the others: a claim of N rows over k busy queues takes
about N/k of each, each queue's oldest first; the caller rotates the list from one claim to
the next (see :mod:`.claims`), so that the extra rows, and the turns of a claim smaller than
the number of busy queues, go round. A claim reads and locks about ``limit`` rows in all
(plus one index probe per queue listed), however many queues there are and however long.

A claim stops at the first message that takes its messages past ``max_total_bytes`` (that
one included: a claim holds at most that plus one message, and at least one row whatever
its size), counting the rows turn by turn (each queue's first, then each queue's second...).
Two services racing for identical serial rows meet the jobs_one_running index: one gets a
unique violation and tries again. A message over ``max_bytes`` comes back as ``NULL`` (with
its size), never delivered. Each row also says how many candidates the claim read, plus
``limit`` when a queue gave all its quota (it may hold more): ``limit`` or more whenever
ready rows may be left although the claim took fewer than ``limit`` (identical serial or
queue_one rows left for later; a busy queue that gave its quota while another had less to
give), so that the queues are not taken for drained: the rows behind are claimed next, at
once. Each row also gives its ``on_duplicate`` and, while it was never settled, its delay
(``run_after - created_at``), which the message's must not exceed by more than
``intake_rows.DELAY_SLACK``; a row settled before
(retried by hand, or by its retry policy) waits from a later time, and gives ``NULL``.

A claim that took fewer rows than ``limit`` (the queues drained for now) ends with one more
row, all ``NULL`` but its last column: in how many seconds the first job that waits for its
``run_after`` becomes ready (``NULL``: none waits; a job parked with an infinite ``run_after`` never
becomes ready by itself), so that the service wakes then rather
than at its next poll. One index probe per queue (jobs_ready, from ``now()`` on), and none
when the claim took ``limit`` rows: the claim loop claims again at once then.

Its ``max_attempts`` becomes its task's declared one when it is the queue's default (see
:mod:`.limits`).

Its commit does not wait for the disk (``synchronous_commit`` off for this transaction
only, so it holds through a pooler too): a claim lost in a crash of the database leaves its
row waiting, or running until its lease runs out, and the job still runs."""

CLAIM_SINGLE = _CLAIM.replace(
    "{candidates}", _SINGLE_CANDIDATES
).replace(
    "{order}", "c.run_after, c.id"
).replace(
    "{read}", "pg_catalog.count(*)"
)  # fmt: skip
""":data:`CLAIM` for a service of one queue (the first of ``queues``), the same rows in the
same order with less work: its oldest ready rows, up to ``limit``; the candidates it gives
are the rows it read."""

CLAIM_USES = Uses(
    reads=(
        "id", "uuid", "queue", "task", "message", "state", "attempts", "max_attempts",
        "claims", "run_after", "on_duplicate", "dup_key", "created_at", "outcome",
    ),
    writes=(
        "state", "attempts", "claims", "max_attempts", "node_id", "lease_until", "started_at",
    ),
)  # fmt: skip
"""The columns of ``jobs`` that :data:`CLAIM` reads and writes."""

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
    _WAKE.replace("{when}", "s.kind = 'requeue' AND s.delay = 0").replace("{queue}", "j.queue"),
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
the row as lost (``worker_lost``, no attempt left, the error :data:`SWEEP` writes) and
nobody claimed it since, so that the late outcome of the job (which did run, or end) is
the truth (a job handed back unstarted, ``requeue``, leaves such a row as it is). The
second case is only looked at for a row that is not running: the common one costs nothing
more. A job handed back unstarted wakes the services of its queue (see :data:`_WAKE`): it
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

_EXPIRED = """expired AS MATERIALIZED (
    SELECT j.id, j.state, j.queue, j.max_attempts, CASE
            WHEN j.attempts >= j.max_attempts THEN 'failed'
            WHEN j.on_duplicate = 'queue_one' AND {waiting_twin} THEN 'cancelled'
            WHEN j.on_duplicate = 'queue_one' THEN {queue_one_back}
            ELSE 'queued'
        END AS next,
        {woken} AS woken
    FROM (
        SELECT j.id, j.state, j.queue, j.attempts, {ack_limit} AS max_attempts, j.on_duplicate,
            j.dup_key
        FROM {s}.jobs AS j{wait}
        WHERE j.state = 'running' AND j.lease_until < pg_catalog.now(){which}
        ORDER BY j.lease_until
        LIMIT %(limit)s
        FOR UPDATE OF j SKIP LOCKED
    ) AS j
)"""
"""The rows whose lease ran out that a sweep takes (``{which}`` narrows them), each with the
state it goes to: ``{queue_one_back}`` for a queue_one row going back to wait. Those going
back to wait wake the services of their queue (see :data:`_WAKE`; ``{woken}`` says which)."""

_TAKE_BACK = """
UPDATE {s}.jobs AS j
SET state = e.next, max_attempts = e.max_attempts, run_after = pg_catalog.now(),
    lease_until = NULL,
    finished_at = CASE WHEN e.next = 'queued' THEN NULL ELSE pg_catalog.now() END,
    outcome = 'worker_lost',
    last_error = pg_catalog.format(
        'worker_lost: the lease of node %%s ran out at %%s during attempt %%s '
        '(the service died, or lost its database connection)',
        j.node_id, j.lease_until, j.attempts)
FROM expired AS e
WHERE j.id = ANY(ARRAY[e.id]) AND j.state = e.state AND j.lease_until < pg_catalog.now()
  AND e.next <> 'alone'
RETURNING j.queue, j.state, j.id"""
"""Take back the rows of ``expired`` (but those left to go ``alone``)."""

SWEEP = (
    f"""
WITH {_EXPIRED}, taken AS ({_TAKE_BACK}
)
SELECT t.queue, t.state, t.id FROM taken AS t
UNION ALL
SELECT e.queue, NULL, e.id FROM expired AS e WHERE e.next = 'alone'
""".replace("{queue_one_back}", "'alone'")
    .replace("{wait}", "")
    .replace("{which}", "")
    .replace(
        "{woken}",
        _WAKE.replace(
            "{when}", "j.attempts < j.max_attempts AND j.on_duplicate IS DISTINCT FROM 'queue_one'"
        ).replace("{queue}", "j.queue"),
    )
)
"""Take back up to ``limit`` rows whose lease ran out: their service is gone. The attempt
counts: the row waits again, or fails when none is left, by its task's declared
``max_attempts`` when the row has the queue's default (a row claimed by a service that did
not know it), which the row then keeps (see :mod:`.limits`).

Each row comes back as its queue, its new state and its id; a queue_one row that would go
back to wait (no identical job waits) is left as it is, and comes back with the state
``NULL``: :data:`SWEEP_ALONE` takes it back, alone. An identical job may wait unseen, stored
by a transaction still open (a publisher's, in the application's own transaction): the
row's entry in the jobs_one_waiting index waits for that transaction to end, and in a
statement of many rows held them all (the sweep failed at its time limit at each round, no
expired lease taken back while the transaction lasted, and a service starting meanwhile,
which sweeps as its claiming connection opens, claimed nothing).

The update finds its rows by id: it compares ``j.state`` with the state they were read in,
not with the constant ``'running'`` (see :data:`RENEW`), so that the jobs_running index,
which holds every expired lease, is not read instead."""

SWEEP_ALONE = (
    f"""
WITH wait AS MATERIALIZED (
    SELECT pg_catalog.set_config('lock_timeout', %(lock_wait)s, true) AS lock_wait
), {_EXPIRED}{_TAKE_BACK}
""".replace("{queue_one_back}", "'queued'")
    .replace("{wait}", " CROSS JOIN wait")
    .replace("{which}", " AND j.id = %(id)s")
    .replace(  # (an identical job waiting may cancel it instead: a wake-up for nothing)
        "{woken}",
        _WAKE.replace("{when}", "j.attempts < j.max_attempts").replace("{queue}", "j.queue"),
    )
)
""":data:`SWEEP` of the one row ``id`` that it left alone (a queue_one row going back to
wait), waiting at most ``lock_wait`` (a ``lock_timeout`` set for this statement alone, pooler
or not) for a transaction that holds an identical job it has not committed: the statement
then fails (``LockNotAvailable``), and the row is tried again at the next sweep (cancelled
then if that job was committed, back to wait if it was rolled back). Up to ``limit`` (1)
row: its queue, its new state and its id."""

SWEEP_USES = Uses(
    reads=(
        "id", "queue", "task", "state", "attempts", "max_attempts", "on_duplicate", "dup_key",
        "lease_until", "node_id",
    ),
    writes=(
        "state", "max_attempts", "run_after", "lease_until", "finished_at", "outcome",
        "last_error",
    ),
)  # fmt: skip
"""The columns of ``jobs`` that :data:`SWEEP` (and :data:`SWEEP_ALONE`) reads and writes."""

PURGE = """
DELETE FROM {s}.jobs WHERE id = ANY(ARRAY(
    SELECT o.id
    FROM pg_catalog.unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT j.id FROM {s}.jobs AS j
        WHERE j.queue = q.name AND j.state = '{state}'
          AND j.finished_at < pg_catalog.now() - pg_catalog.make_interval(secs => %(keep)s)
        ORDER BY j.finished_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS o
    LIMIT %(limit)s))
RETURNING id
"""
"""Delete up to ``limit`` rows of the ``queues`` in the finished state ``{state}`` older
than ``keep`` seconds: a service purges the queues it serves, and only those (the others'
rows are kept as long as the services serving them say).

One statement per state, named in the text, and one index scan per queue: the
jobs_finished_by_queue index (queue, state, finished_at) hands over each queue's oldest rows
in order, so a batch reads about ``limit`` rows however many are due, in these queues or
in others (ordering the rows of several states or queues at once would sort every one of
them for each batch). The queues are taken in turn: the next only once the rows due in
the previous are fewer than ``limit``. The ids go through an array so that the rows are
then found by id, whatever the plan's estimates."""

PURGE_USES = Uses(reads=("id", "queue", "state", "finished_at"))
"""The columns of ``jobs`` that :data:`PURGE` reads (it deletes rows, and locks them first:
``FOR UPDATE`` needs ``UPDATE`` on any one column)."""

PURGE_TICKS = """
DELETE FROM {s}.schedule_ticks WHERE (task, tick) IN (
    SELECT task, tick FROM {s}.schedule_ticks
    WHERE created_at < pg_catalog.now() - pg_catalog.make_interval(secs => %(keep)s)
    LIMIT %(limit)s)
RETURNING tick
"""
"""Delete up to ``limit`` schedule ticks older than ``keep`` seconds, whatever their task.

Every service, whichever tasks it schedules, keeps ticks for the same time (an hour, not
configurable), twice as long as any service may still offer one: a tick is offered until
it is stored or given up, at most ``TICK_OFFER_WINDOW`` (half an hour) after its time plus
one attempt (``producers.TICK_ATTEMPT_LIMIT``), by a service cut off from the database
meanwhile, say. No service deletes a tick that another may still offer (and store
again)."""

PURGE_TICKS_USES = Uses(reads=("task", "tick", "created_at"))
"""The columns of ``schedule_ticks`` that :data:`PURGE_TICKS` reads (it deletes rows)."""

SUBMIT_TICK = """
WITH tick AS (
    INSERT INTO {s}.schedule_ticks (task, tick)
    SELECT %(task)s, t FROM pg_catalog.unnest(%(ticks)s::bigint[]) AS t
    ON CONFLICT DO NOTHING
    RETURNING tick
), job AS (
    INSERT INTO {s}.jobs (uuid, queue, task, message, max_attempts, run_after,
                          on_duplicate, dup_key)
    SELECT %(uuid)s, %(queue)s, %(task)s, %(message)s, %(max_attempts)s,
           pg_catalog.now() + pg_catalog.make_interval(secs => %(delay)s), %(on_duplicate)s,
           %(dup_key)s
    WHERE (SELECT pg_catalog.count(*) FROM tick) = pg_catalog.cardinality(%(ticks)s::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING queue
)
SELECT CASE WHEN {wake_if_room} THEN pg_catalog.pg_notify(%(channel)s, job.queue) END
FROM job
"""
"""Store a scheduled task's job once per (task, tick) across every service: only the one
whose tick rows (``ticks``: every number the tick is known by) are all new inserts the job
and wakes the services, in the same transaction (unless the NOTIFY queue is half full or
more: see ``dispatcher.schema.QUEUE_WAKEUP_IF_ROOM``; a row is returned all the same).
The database does not judge whether the tick is still due (its clock may differ from the
services'): the services stop offering a tick in time (see ``producers.run_once_per_tick``).
"""

SUBMIT_TICK_USES = {"jobs": Uses(reads=("queue",)), "schedule_ticks": Uses(reads=("tick",))}
"""The columns :data:`SUBMIT_TICK` reads, by table (it inserts rows in both)."""


QUARANTINE = """
WITH {candidates}
SELECT j.id, pg_catalog.convert_to(j.uuid, e.name) AS uuid,
    pg_catalog.convert_to(j.task, e.name) AS task,
    pg_catalog.convert_to(j.message, e.name) AS message, e.name AS encoding
FROM {s}.jobs AS j
CROSS JOIN (SELECT pg_catalog.current_setting('server_encoding')::name AS name) AS e
WHERE j.id = ANY(ARRAY(SELECT c.id FROM candidates AS c))
ORDER BY j.id
""".replace("{candidates}", _FAIR_CANDIDATES)
"""The rows a claim would read (``queues``, ``limit``: the candidates of :data:`CLAIM`, which
:data:`CLAIM_SINGLE` reads too for one queue), their text as the bytes the database holds,
with the database's encoding: a claim fails when one of them cannot be sent in the client's
encoding (UTF-8). A ``SQL_ASCII`` database stores bytes that are not UTF-8, another encoding
bytes that it leaves undefined (``0x81`` in ``WIN1252``), when a client in that encoding
writes them (see ``claims.Claimer``)."""

QUARANTINE_CHECK = """
SELECT pg_catalog.octet_length(pg_catalog.convert_to(CASE %(column)s
        WHEN 'uuid' THEN j.uuid WHEN 'task' THEN j.task ELSE j.message END, 'UTF8'))
FROM {s}.jobs AS j
WHERE j.id = %(id)s
"""
"""Convert one ``column`` (``uuid``, ``task``, ``message``) of the row ``id`` to UTF-8, as a
claim's reply is: it fails where the claim would, for an encoding whose conversion only the
server knows (``EUC_JP``...)."""

QUARANTINE_FAIL = """
UPDATE {s}.jobs AS j
SET state = 'failed', lease_until = NULL, finished_at = pg_catalog.now(), outcome = 'rejected',
    last_error = f.error
FROM ROWS FROM (pg_catalog.unnest(%(ids)s::bigint[]), pg_catalog.unnest(%(errors)s::text[]))
    AS f(id, error)
WHERE j.id = f.id AND j.state = 'queued'
RETURNING j.queue
"""
"""Fail the rows ``ids`` that no service can read, each with its ``errors`` text; return
the queue of each row failed (one no longer waiting is left as it is)."""


@dataclass(frozen=True)
class Statements:
    """The statements above for one schema, ready to execute (as bytes)."""

    claim: bytes
    claim_single: bytes
    """The claim of a service of one queue."""
    renew: bytes
    acknowledge: bytes
    sweep: bytes
    purge: tuple[bytes, ...]
    """One per finished state."""
    purge_ticks: bytes
    submit_tick: bytes
    quarantine: bytes = b""
    quarantine_check: bytes = b""
    quarantine_fail: bytes = b""
    renew_waiting: bytes = b""
    """The renewal of the rows :attr:`renew` found locked, waiting for them briefly."""
    sweep_alone: bytes = b""
    """The sweep of one row :attr:`sweep` left alone (a queue_one row going back to wait)."""

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        """The statements for the tables in *schema*."""
        name = quoted(schema)
        twin = _WAITING_TWIN.format(s=name)

        def make(text: str, state: str = "") -> bytes:
            limits = {
                "claim_limit": _LIMIT.format(least="j.attempts + 1"),
                "ack_limit": _LIMIT.format(least="j.attempts"),
            }
            claimable = _CLAIMABLE.format(s=name)
            filled = text.format(
                s=name,
                waiting_twin=twin,
                state=state,
                claimable=claimable,
                wake_if_room=QUEUE_WAKEUP_IF_ROOM,
                **limits,
            )
            return filled.strip().encode()

        return cls(
            make(CLAIM),
            make(CLAIM_SINGLE),
            make(RENEW),
            make(ACKNOWLEDGE),
            make(SWEEP),
            tuple(make(PURGE, state) for state in FINAL_STATES),
            make(PURGE_TICKS),
            make(SUBMIT_TICK),
            make(QUARANTINE),
            make(QUARANTINE_CHECK),
            make(QUARANTINE_FAIL),
            renew_waiting=make(RENEW_WAITING),
            sweep_alone=make(SWEEP_ALONE),
        )
