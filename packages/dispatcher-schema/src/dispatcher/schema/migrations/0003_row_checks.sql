-- Migration 3: the table refuses rows that no service writes and none can work off.
--
-- A row written by hand could wait with no attempt left or with more attempts than allowed
-- (a claim adds one to `attempts`: at the integer limit, the claim statement, which serves
-- every queue, failed each time), or run without a lease, or with one that never runs out
-- (no sweep takes it back, and a running job cannot be retried). (`claims` is never
-- checked: a claim counts it on modulo the integer limit.) Such rows are ended first, as
-- failed with the reason; then the checks keep new ones out (an INSERT or UPDATE that
-- would make one fails, naming the check). The table is read three times (two updates,
-- then the checks' validation), under its lock: about a second per million rows.
-- Safe to run again.

UPDATE {schema}.jobs
SET state = 'failed', lease_until = NULL, finished_at = pg_catalog.now(), outcome = 'rejected',
    last_error = CASE
        WHEN state = 'running'
            THEN 'rejected: running without a lease that can run out'
        ELSE pg_catalog.format('rejected: waiting with no attempt left (%s of %s used)',
                    least(attempts, max_attempts), max_attempts)
    END
WHERE (state = 'queued' AND attempts >= max_attempts)
   OR (state = 'running' AND (lease_until IS NULL OR NOT pg_catalog.isfinite(lease_until)));

UPDATE {schema}.jobs SET attempts = max_attempts WHERE attempts > max_attempts;

ALTER TABLE {schema}.jobs
    DROP CONSTRAINT IF EXISTS jobs_attempts_left,
    DROP CONSTRAINT IF EXISTS jobs_running_leased,
    ADD CONSTRAINT jobs_attempts_left CHECK (
        attempts <= max_attempts AND (state <> 'queued' OR attempts < max_attempts)),
    ADD CONSTRAINT jobs_running_leased CHECK (
        state <> 'running' OR (lease_until IS NOT NULL AND pg_catalog.isfinite(lease_until)));
