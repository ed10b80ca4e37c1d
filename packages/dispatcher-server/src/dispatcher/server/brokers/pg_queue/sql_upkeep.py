"""The statements of upkeep: purging finished jobs and old schedule ticks, storing a tick.

See :mod:`.sql` for how the statements are written and assembled for a schema.
"""

from __future__ import annotations

from dispatcher.server.brokers.pg_queue.sql_shared import Uses

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
