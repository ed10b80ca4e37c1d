"""Which control commands each broker may carry (``brokers.<name>.allow_control``)."""

from __future__ import annotations

from collections.abc import Collection

from dispatcher.config import BrokerName, Brokers


class ControlAllowList:
    """The per-broker lists of allowed control commands; a broker without one allows all.

    Messages made inside the service and bound tasks' control calls (broker ``None``) are
    not subject to it.
    """

    def __init__(self, brokers: Brokers) -> None:
        self._allowed: dict[BrokerName, frozenset[str]] = {}
        for name in brokers.names:
            allowed = brokers.allow_control(name)
            if allowed is not None:
                self._allowed[name] = frozenset(allowed)

    def refusal(self, command: str, broker: BrokerName | None) -> str | None:
        """Say why *command* may not arrive over *broker*; ``None`` when it may."""
        allowed = None if broker is None else self._allowed.get(broker)
        if allowed is None or command in allowed:
            return None
        return (
            f"control command {command!r} is not allowed over {broker} "
            f"(brokers.{broker}.allow_control)"
        )

    def unknown(self, commands: Collection[str]) -> list[tuple[BrokerName, str]]:
        """The allowed names that are not among *commands* (likely typos), by broker."""
        return [
            (broker, name)
            for broker, names in self._allowed.items()
            for name in sorted(names)
            if name not in commands
        ]
