"""Control commands being answered, each in a task of its own: bounded, and ended at the stop.

Control messages (from any broker) and bound tasks' control requests are answered in tasks
of the service's own, so that a command walking a long backlog lets the service go on
meanwhile. The commands that look at every task held are bounded
(:data:`MAX_CONTROL_IN_FLIGHT`); each message is settled once answered; the stop waits a
little for those being answered (:data:`CONTROL_WAIT`), then cuts short the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from dispatcher.schema import Outcome
from dispatcher.server.brokers.replies import ReplyRouter
from dispatcher.server.control import WALKING_COMMANDS
from dispatcher.server.control_messages import ControlMessages
from dispatcher.server.log_records import get_logger
from dispatcher.server.origin import Origin
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.rejection import Rejected
from dispatcher.server.settlement import ABANDONED, REJECTED, Settlements
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.service")

MAX_CONTROL_IN_FLIGHT: Final = 64
"""Control messages that look at every task held (``running``, ``cancel``, ``status``: one at
a time, each a while over a long backlog) waiting or being answered, at most; one more is
refused (``overloaded``) with an error reply, so that a flood of them cannot pile up. Other
commands answer at once, however many arrive together."""
CONTROL_WAIT: Final = 2.0
"""Seconds a stop waits (``service.shutdown_grace`` if less), once the workers have stopped,
for the control commands still being answered; those not answered by then are cut short (a
stored one is handed back to its queue, to run again). A ``cancel`` that has taken its jobs
always ends: it settles them."""
NOT_ANSWERED: Final = "the service stopped before it could answer"
"""The error replied to a control message cut short by the stop (and why a stored one is
handed back)."""


class ControlAnswers:
    """Answers control messages (:meth:`message`) and bound tasks' requests (:meth:`request`).

    Each runs in a task of :attr:`tasks`; :meth:`end`, as the service stops, lets those being
    answered end, then cuts short those still going.
    """

    def __init__(
        self,
        control: ControlMessages,
        stats: ServiceStats,
        settlements: Settlements,
        replies: ReplyRouter,
    ) -> None:
        self._control = control
        self._stats = stats
        self._settlements = settlements
        self._replies = replies
        self.tasks: TaskGroup | None = None
        """The service's own tasks (set once it runs): control commands run in them."""
        self._walks_in_flight = 0
        """Control messages that look at every task held being answered (at most
        :data:`MAX_CONTROL_IN_FLIGHT`; all of those being answered: :attr:`_answering`)."""
        self._answering: set[anyio.CancelScope] = set()
        """Where each control command being answered runs (a message's, a bound task's): a
        stop cuts short those that outlast :data:`CONTROL_WAIT`, before its last flush."""
        self._answered: anyio.Event | None = None
        """Set when the last command being answered ends, for a stop waiting for it."""
        self._answering_closed = False
        """The stop no longer waits for control commands: one arriving now is not run."""
        self._internal_errors = InternalErrorLog(logger)

    async def end(self, grace: float) -> None:
        """Let the control commands being answered end, then cut short those still going.

        They get up to :data:`CONTROL_WAIT` s (*grace* if less); those cut short settle
        what they hold on their way out (before the stop's last flush).
        """
        with anyio.move_on_after(min(CONTROL_WAIT, grace)):
            await self._no_answers()
        self._answering_closed = True
        for scope in self._answering:
            scope.cancel()
        with anyio.move_on_after(CONTROL_WAIT):  # (each ends at its next await)
            await self._no_answers()

    async def _no_answers(self) -> None:
        while self._answering:
            self._answered = anyio.Event()
            await self._answered.wait()

    def _answer_begun(self) -> anyio.CancelScope:
        """Where a control command about to be answered runs (see :attr:`_answering`)."""
        scope = anyio.CancelScope()
        self._answering.add(scope)
        return scope

    def _answer_ended(self, scope: anyio.CancelScope) -> None:
        self._answering.discard(scope)
        if not self._answering and self._answered is not None:
            self._answered.set()

    def message(
        self, message: dict[str, Any], channel: str, origin: Origin, refused: Rejected | None
    ) -> None:
        """A control message arrived: run it (unless *refused*), answer on ``reply_to``.

        It runs in a task of its own (a command walking a long backlog lets the service go
        on meanwhile), which settles *origin* once it has answered: ``ok``, or ``rejected``
        with the reply's error; ``abandoned`` (to be delivered again) when the service
        stops before it could answer.
        """
        if refused is not None:
            self._reply(message, origin, self._control.refused(str(refused)))
        elif self._answering_closed:
            self._not_answered(message, origin)
        elif (walking := str(message.get("control")) in WALKING_COMMANDS) and (
            self._walks_in_flight >= MAX_CONTROL_IN_FLIGHT
        ):
            self._stats.rejected["overloaded"] += 1
            error = (
                f"{MAX_CONTROL_IN_FLIGHT} commands that look at every task held are being "
                "answered already: try again once they are"
            )
            self._reply(message, origin, self._control.refused(error))
            self._settlements.origin(origin, REJECTED, error)
        else:
            ended = None if origin.answering is None else origin.answering()
            self._walks_in_flight += walking
            scope = self._answer_begun()
            self._start_soon(self._answer_control, message, channel, origin, ended, scope, walking)

    async def _answer_control(
        self,
        message: dict[str, Any],
        channel: str,
        origin: Origin,
        ended: Callable[[], None] | None,
        scope: anyio.CancelScope,
        walking: bool,
    ) -> None:
        reply: dict[str, Any] | None = None
        try:
            with scope:
                reply = await self._control.answer(message, channel, origin.broker)
            if reply is None:  # the stop cut it short
                self._not_answered(message, origin)
                return
            self._reply(message, origin, reply)
        except Exception as exc:  # a bug here must cost one message, never the service
            self._stats.rejected["internal_error"] += 1
            self._internal_errors.report("control", exc, f"a message on {channel}")
            self._settlements.origin(origin, REJECTED, "internal error")
            return
        finally:
            self._walks_in_flight -= walking
            self._answer_ended(scope)
            if ended is not None:
                ended()
        error = reply.get("error")
        if error is None:
            self._settlements.origin(origin, Outcome.OK)
        else:  # a stored control message ends failed, with its reply's error
            self._settlements.origin(origin, REJECTED, str(error))

    def _not_answered(self, message: dict[str, Any], origin: Origin) -> None:
        """The service stops before it could answer *message*.

        A stored one runs again later (its reply comes then); the sender of another is told.
        """
        if origin.receipt is None:
            self._reply(message, origin, self._control.refused(NOT_ANSWERED))
        self._settlements.origin(origin, ABANDONED, NOT_ANSWERED)

    def _reply(self, message: dict[str, Any], origin: Origin, reply: dict[str, Any]) -> None:
        """Send *reply* to the control *message*'s ``reply_to``, if it has one."""
        reply_to = message.get("reply_to")
        if reply_to:
            if origin.reply is not None:
                origin.reply(str(reply_to), reply)
            elif origin.broker is not None:
                self._replies.send(origin.broker, str(reply_to), reply)

    def request(
        self,
        command: str,
        data: dict[str, Any],
        answer: Callable[[dict[str, Any]], None],
    ) -> None:
        """A bound task's control request: run it in a task of its own, then *answer*."""
        if self._answering_closed:
            return  # its worker has stopped by now
        scope = self._answer_begun()

        async def run() -> None:
            try:
                with scope:
                    answer(await self._control.commands.handle(command, data))
            finally:
                self._answer_ended(scope)

        self._start_soon(run)

    def _start_soon(self, function: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run *function* in a task of the service's own."""
        if self.tasks is None:
            raise RuntimeError("the service is not running")
        self.tasks.start_soon(function, *args, name="control")
