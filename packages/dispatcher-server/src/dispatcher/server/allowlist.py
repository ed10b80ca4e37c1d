"""Which control commands each broker may carry (``brokers.<name>.allow_control``)."""

from __future__ import annotations

from collections.abc import Collection

from dispatcher.config import Brokers
from dispatcher.config.settings import BrokerName


class ControlAllowList:
    """The per-broker lists of allowed control commands; a broker without one allows all.

    Messages made inside the service and bound tasks' control calls (broker ``None``) are
    not subject to it.
    """

    def __init__(self, brokers: Brokers) -> None:
        pg_notify, socket = brokers.pg_notify, brokers.socket
        self._allowed: dict[BrokerName, frozenset[str]] = {}
        if pg_notify is not None and pg_notify.allow_control is not None:
            self._allowed["pg_notify"] = frozenset(pg_notify.allow_control)
        if socket is not None and socket.allow_control is not None:
            self._allowed["socket"] = frozenset(socket.allow_control)

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
