"""How many jobs the claim loop holds ahead of its free workers (``brokers.pg_queue.prefetch``).

Jobs held ahead are leased to this service: no other service sees them. Behind quick jobs
that costs nothing, and saves a round trip to the database every few jobs (the durable
benchmark's no-op jobs come in claims of about a hundred). Behind long jobs it saves
nothing worth having (a round trip, against seconds of work), and a burst of them is
hoarded by the first service to claim while the rest of a fleet idles: 60 jobs of 2 s over
20 services of 2 workers took 60 s with 100 held ahead, 6 s with none.

``prefetch: auto`` (the default) therefore holds ahead about :data:`AHEAD_SECONDS` of work
at the pace of this service's recent jobs, at most :data:`AUTO_CAP` jobs: a hundred behind
jobs of 5 ms or less, ten behind jobs of 50 ms, none behind jobs longer than 0.5 s. The
pace is a decaying maximum of their run times (one slow job keeps the count low for dozens
of quick ones), and is forgotten after :data:`RECENT` seconds without a job ending: a burst
after a quiet spell is claimed for the free workers only, until its first jobs show they are
quick. An integer ``prefetch`` is held ahead always, whatever the jobs' pace (``0``: none).

Jobs still running count too: once every worker place is taken, the jobs held ahead wait at
least until one of those ends, so the age of the youngest running job (see
``brokers.base.Capacity.busy_for``) is taken as a run time when it is the longer. A service
whose workers have all been busy on long jobs for more than :data:`AHEAD_SECONDS` holds
nothing more ahead, and leaves the quick jobs of a queue it shares to the services that can
start them (without this, it claimed up to a hundred of them, held until the long jobs
ended, while the pace of the last jobs that ended was quick).

The pace is the service's, over all the queues it serves: a service that serves quick and
long queues alike may hold long jobs ahead while its quick ones keep the pace quick (set
``prefetch: 0`` on the services of queues of long jobs, or serve those apart).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

AHEAD_SECONDS: Final = 0.5
"""Seconds of work, at the recent jobs' pace, that ``prefetch: auto`` holds ahead."""
AUTO_CAP: Final = 100
"""Most jobs ``prefetch: auto`` holds ahead."""
RECENT: Final = 10.0
"""Seconds without a job ending after which the pace is forgotten (nothing held ahead)."""
DECAY: Final = 0.9
"""How much of the slowest recent run time each further job's run keeps in memory."""


class Prefetch:
    """Says how many jobs to hold ahead: *fixed* always, or (``None``) by the recent pace."""

    def __init__(
        self,
        fixed: int | None,
        clock: Callable[[], float] = time.monotonic,
        busy_for: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """*busy_for()*: seconds every worker place has been taking a job (``0``: one is free)."""
        self._fixed = fixed
        self._clock = clock
        self._busy_for = busy_for
        self._slowest: float | None = None
        """A decaying maximum of the recent run times (``None``: none known)."""
        self._last = 0.0
        """When (``clock()``) a job last ended."""

    def ran(self, seconds: Iterable[float]) -> None:
        """Jobs ran for these *seconds* each (in the order they ended)."""
        slowest, any_ran = self._slowest, False
        for run in seconds:
            slowest = run if slowest is None else max(run, slowest * DECAY)
            any_ran = True
        if any_ran:
            self._slowest, self._last = slowest, self._clock()

    def ahead(self) -> int:
        """How many jobs to claim ahead of the free workers now."""
        if self._fixed is not None:
            return self._fixed
        slowest = self._slowest
        if slowest is None:
            return 0
        if self._clock() - self._last > RECENT:
            self._slowest = None  # forgotten: the next burst shows its own pace
            return 0
        if slowest > AHEAD_SECONDS:
            return 0  # (the workers' state cannot raise that)
        # The jobs held now wait at least as long as the workers stay busy.
        slowest = max(slowest, self._busy_for())
        if slowest * AUTO_CAP <= AHEAD_SECONDS:
            return AUTO_CAP
        return int(AHEAD_SECONDS / slowest)
