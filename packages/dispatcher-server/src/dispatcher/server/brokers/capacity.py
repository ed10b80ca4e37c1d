"""The service's free capacity, as brokers that pull work (durable queues) read it."""

from __future__ import annotations

from collections.abc import Callable

import anyio


class CapacityGauge:
    """A :class:`~dispatcher.server.brokers.base.Capacity` computed when asked.

    *compute(ahead)* says how many jobs the service would take now, letting *ahead* wait
    for a worker: free worker places less jobs already waiting, plus *ahead* (negative when
    more wait than that). While *taking* says no (the service does not know its tasks yet),
    there is none. :meth:`changed` is called whenever a worker becomes free, or *taking*
    turns true; it wakes brokers waiting in :meth:`wait_free` (those of its :meth:`view`
    gauges too), and costs nothing when none waits. *busy_for()* is :meth:`busy_for`.
    """

    def __init__(
        self,
        compute: Callable[[int], int] = lambda ahead: ahead,
        taking: Callable[[], bool] = lambda: True,
        busy_for: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._compute = compute
        self._taking = taking
        self._busy_for = busy_for
        self._waiting: anyio.Event | None = None
        self._views: list[CapacityGauge] = []

    def view(self, compute: Callable[[int], int]) -> CapacityGauge:
        """A gauge of its own for one broker (*compute* sees its jobs), woken with this one."""
        gauge = CapacityGauge(compute, self._taking, self._busy_for)
        self._views.append(gauge)
        return gauge

    def free(self, ahead: int = 0) -> int:
        """Jobs the service would take now, holding at most *ahead* waiting for a worker."""
        if not self._taking():
            return 0
        return max(0, self._compute(ahead))

    def busy_for(self) -> float:
        """Seconds every worker place has been taking a job: ``0`` while one is free."""
        return self._busy_for()

    def changed(self) -> None:
        """Capacity may have grown: wake whoever waits for it."""
        if self._waiting is not None:
            self._waiting.set()
            self._waiting = None
        for view in self._views:
            view.changed()

    async def wait_free(self, ahead: int = 0) -> int:
        """Return :meth:`free` (with *ahead*) as soon as it is more than zero."""
        while (free := self.free(ahead)) <= 0:
            if self._waiting is None:
                self._waiting = anyio.Event()
            await self._waiting.wait()
        return free
