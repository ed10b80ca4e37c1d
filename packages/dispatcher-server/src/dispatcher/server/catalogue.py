"""The registered task names: learnt once from the first worker, read by everyone else."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType


class TaskCatalogue:
    """Which task names may run. Empty (unknown) until the first worker reports them."""

    def __init__(self) -> None:
        self.names: frozenset[str] | None = None
        """The registered names; ``None`` until a worker has said."""
        self.queues: Mapping[str, str] = MappingProxyType({})
        """The queue each task registered with, for tasks that named one (a function
        choosing the queue at each submission is not known here)."""
        self.max_attempts: Mapping[str, int] = MappingProxyType({})
        """The ``max_attempts`` of the tasks registered with one (``@task(max_attempts=)``)."""
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    def on_known(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Have *listener(names)* called once the names are known."""
        self._listeners.append(listener)

    def learn(
        self,
        names: frozenset[str],
        queues: Mapping[str, object] | None = None,
        max_attempts: Mapping[str, object] | None = None,
    ) -> None:
        """Record the names (queues, max_attempts) a worker reported; only the first counts."""
        if self.names is not None:
            return
        self.refresh(names, queues, max_attempts)
        for listener in self._listeners:
            listener(names)

    def refresh(
        self,
        names: frozenset[str],
        queues: Mapping[str, object] | None = None,
        max_attempts: Mapping[str, object] | None = None,
    ) -> None:
        """Replace the names (queues, max_attempts) by those of reloaded code.

        Listeners are not told.
        """
        self.names = names
        self.queues = MappingProxyType(
            {task: queue for task, queue in (queues or {}).items() if isinstance(queue, str)}
        )
        self.max_attempts = MappingProxyType(
            {
                task: attempts
                for task, attempts in (max_attempts or {}).items()
                if type(attempts) is int
            }
        )
