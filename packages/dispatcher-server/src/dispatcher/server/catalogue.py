"""The registered task names: learnt once from the first worker, read by everyone else."""

from __future__ import annotations

from collections.abc import Callable


class TaskCatalogue:
    """Which task names may run. Empty (unknown) until the first worker reports them."""

    def __init__(self) -> None:
        self.names: frozenset[str] | None = None
        """The registered names; ``None`` until a worker has said."""
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    def on_known(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Have *listener(names)* called once the names are known."""
        self._listeners.append(listener)

    def learn(self, names: frozenset[str]) -> None:
        """Record the names a worker reported; only the first report counts."""
        if self.names is not None:
            return
        self.names = names
        for listener in self._listeners:
            listener(names)
