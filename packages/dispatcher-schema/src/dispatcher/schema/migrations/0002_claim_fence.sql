-- Migration 2: a claim counter that never goes back, the fence of claims.
--
-- `attempts` fenced each claim until now, but `dispatcherctl retry` resets it: the late
-- outcome of a claim made before the retry could then match a claim made after it, with
-- the same attempts number. `claims` counts every claim of the row and is never reset;
-- renewals and outcomes apply only to the row whose `claims` (and `attempts`) still equal
-- the values it was claimed with. Safe to run again: each statement checks first.

ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS claims integer NOT NULL DEFAULT 0;
