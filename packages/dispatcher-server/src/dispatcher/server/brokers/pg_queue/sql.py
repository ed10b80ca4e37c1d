"""The statements of the pg_queue broker, for one PostgreSQL schema (:class:`Statements`).

They are written in :mod:`.sql_claims` (claims), :mod:`.sql_outcomes` (lease renewals and
outcomes), :mod:`.sql_sweeps` (leases that ran out) and :mod:`.sql_upkeep` (purges,
schedule ticks), with what they share in :mod:`.sql_shared`; this module fills them in for
a schema.

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

from dispatcher.schema import QUEUE_WAKEUP_IF_ROOM
from dispatcher.server.brokers.pg_queue.migrations import quoted
from dispatcher.server.brokers.pg_queue.sql_claims import (
    CLAIM,
    CLAIM_SINGLE,
    QUARANTINE,
    QUARANTINE_CHECK,
    QUARANTINE_FAIL,
)
from dispatcher.server.brokers.pg_queue.sql_outcomes import ACKNOWLEDGE, RENEW, RENEW_WAITING
from dispatcher.server.brokers.pg_queue.sql_sweeps import SWEEP, SWEEP_ALONE
from dispatcher.server.brokers.pg_queue.sql_upkeep import PURGE, PURGE_TICKS, SUBMIT_TICK

FINAL_STATES = ("done", "failed", "cancelled")
"""The states a job ends in."""

_WAITING_TWIN = """EXISTS (
            SELECT 1 FROM {s}.jobs AS w
            WHERE w.state = 'queued' AND w.on_duplicate = 'queue_one' AND w.dup_key = j.dup_key)"""
"""A queue_one row going back to wait while an identical one already waits (at most one
may: the jobs_one_waiting index); it is cancelled instead."""

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
