"""The statements that claim jobs (:data:`CLAIM`), and those that find the rows no claim can read.

See :mod:`.sql` for how the statements are written and assembled for a schema.
"""

from __future__ import annotations

from dispatcher.server.brokers.pg_queue.sql_shared import Uses

FAIR_CANDIDATES = """active AS (
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
    "{candidates}", FAIR_CANDIDATES
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


QUARANTINE = """
WITH {candidates}
SELECT j.id, pg_catalog.convert_to(j.uuid, e.name) AS uuid,
    pg_catalog.convert_to(j.task, e.name) AS task,
    pg_catalog.convert_to(j.message, e.name) AS message, e.name AS encoding
FROM {s}.jobs AS j
CROSS JOIN (SELECT pg_catalog.current_setting('server_encoding')::name AS name) AS e
WHERE j.id = ANY(ARRAY(SELECT c.id FROM candidates AS c))
ORDER BY j.id
""".replace("{candidates}", FAIR_CANDIDATES)
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
