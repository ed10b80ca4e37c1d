-- Migration 1: the tables of the durable `pg_queue` broker.
--
-- {schema} stands for the configured PostgreSQL schema (brokers.pg_queue.schema, default
-- `dispatcher`), quoted as an identifier by the migration runner. Run in one transaction.

CREATE TABLE {schema}.jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid          text NOT NULL,
    queue         text NOT NULL,
    task          text NOT NULL,
    -- The task message, exactly as published (JSON text; its schema does not change).
    message       text NOT NULL,
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    -- Claims so far. It also fences the current claim: an outcome or a lease renewal only
    -- counts for the row whose attempts still equal the value it was claimed with.
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts  integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 1000),
    -- Not before: now() for a job to run at once, later for a delay or a retry's backoff.
    run_after     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- While running: until when the claiming service holds it (renewed while it runs).
    lease_until   timestamptz,
    node_id       text,
    -- on_duplicate: the identity of (task, args, kwargs), set unless the mode is parallel.
    on_duplicate  text CHECK (on_duplicate IN ('discard', 'serial', 'queue_one')),
    dup_key       text,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    -- The outcome of the last attempt (ok, error, timeout, worker_lost, ...), its error
    -- and traceback, and the task's return value (JSON, size-capped) once done.
    outcome       text,
    last_error    text,
    result        jsonb,
    CHECK ((on_duplicate IS NULL) = (dup_key IS NULL))
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);

-- A uuid names one job: publishing the same uuid again is a no-op (idempotent retries).
CREATE UNIQUE INDEX jobs_uuid ON {schema}.jobs (uuid);

-- The claim's scan: ready rows only, in the order they are claimed.
CREATE INDEX jobs_ready ON {schema}.jobs (queue, run_after, id) WHERE state = 'queued';

-- The lease sweep: running rows only.
CREATE INDEX jobs_running ON {schema}.jobs (lease_until) WHERE state = 'running';

-- Listing and purging finished rows.
CREATE INDEX jobs_finished ON {schema}.jobs (state, finished_at) WHERE state IN ('done', 'failed', 'cancelled');

-- on_duplicate, across every host:
-- serial and queue_one: never two identical jobs running at once;
CREATE UNIQUE INDEX jobs_one_running ON {schema}.jobs (dup_key)
    WHERE state = 'running' AND on_duplicate IN ('serial', 'queue_one');
-- queue_one: at most one identical job waiting;
CREATE UNIQUE INDEX jobs_one_waiting ON {schema}.jobs (dup_key)
    WHERE state = 'queued' AND on_duplicate = 'queue_one';
-- discard: a new identical job is not inserted while one is waiting or running.
CREATE UNIQUE INDEX jobs_one_active ON {schema}.jobs (dup_key)
    WHERE state IN ('queued', 'running') AND on_duplicate = 'discard';

-- Scheduled tasks on durable queues run once per tick across all hosts: the first service
-- to insert (task, tick) here inserts the job, in the same transaction.
CREATE TABLE {schema}.schedule_ticks (
    task        text NOT NULL,
    tick        bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (task, tick)
);
