"""What several statements of the pg_queue broker share: what each uses, the wake-up.

See :mod:`.sql` for how the statements are written and assembled for a schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, QUEUE_WAKEUP_IF_ROOM


@dataclass(frozen=True)
class Uses:
    """The columns of a table that a statement reads, and those it writes.

    What a role needs of that table for it: ``SELECT`` on each column read and ``UPDATE``
    on each written, whether granted on the table or on those columns alone (see
    :mod:`.privileges`). A column only assigned, never read, needs no ``SELECT``.
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...] = ()


WAKE = f"""CASE WHEN {{when}} AND {QUEUE_WAKEUP_IF_ROOM}
            THEN pg_catalog.pg_notify('{QUEUE_WAKEUP_CHANNEL}', {{queue}}) IS NULL END"""
"""Wake the services of the queue ``{queue}`` (a NOTIFY on the wake-up channel, sent at
commit) when ``{when}``: a row ready again without being stored (given back unstarted, or
taken back from a dead service) has no publisher to wake them, and they would find it only
at their next poll (``poll_interval``, the fallback for lost wake-ups). Not while the
server's NOTIFY queue is half full or more (see ``dispatcher.schema.QUEUE_WAKEUP_IF_ROOM``).
PostgreSQL sends one NOTIFY per queue however many rows call it in a statement."""
