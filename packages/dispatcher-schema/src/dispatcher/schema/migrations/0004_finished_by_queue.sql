-- Migration 4: the finished rows of each queue, in the order they ended.
--
-- A service purges only the finished rows of the queues it serves, each kept as long as
-- its own `keep_finished` says: the rows of other queues, kept longer by the services that
-- serve them, are never its to delete. This index hands a service the oldest finished rows
-- of one queue and state in order, so that a purge batch reads the rows it deletes and
-- none of the other queues' (jobs_finished, by state alone, would walk past every old row
-- of the other queues at each batch). jobs_finished stays: `dispatcherctl purge` and the
-- services of the previous versions use it. Building the index reads the finished rows
-- once; publishers and services wait for it (about a second per million rows). Services
-- of version 3 keep working on the upgraded tables. Safe to run again.

CREATE INDEX IF NOT EXISTS jobs_finished_by_queue ON {schema}.jobs (queue, state, finished_at)
    WHERE state IN ('done', 'failed', 'cancelled');
