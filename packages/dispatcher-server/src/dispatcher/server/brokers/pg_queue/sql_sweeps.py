"""The statements that take back the jobs whose lease ran out (their service is gone).

See :mod:`.sql` for how the statements are written and assembled for a schema.
"""

from __future__ import annotations

from dispatcher.server.brokers.pg_queue.sql_shared import WAKE, Uses

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
back to wait wake the services of their queue (see ``sql_shared.WAKE``; ``{woken}`` says which)."""

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
        WAKE.replace(
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
not with the constant ``'running'`` (see ``sql_outcomes.RENEW``), so that the jobs_running index,
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
        WAKE.replace("{when}", "j.attempts < j.max_attempts").replace("{queue}", "j.queue"),
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
