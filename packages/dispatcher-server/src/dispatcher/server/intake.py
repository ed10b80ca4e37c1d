"""What happens to each payload the service receives, before any worker sees it.

Decode the JSON, join chunk envelopes, validate against the schemas, route, and check that
the task is registered. A payload that fails any step is rejected: one (rate-limited) log
line with the reason and the uuid if there is one, and a counter. Nothing a payload holds
can stop the service.

As in dispatcherd, a payload that is not JSON but a task name (``myapp.tasks.cleanup``)
stands for ``{"task": "myapp.tasks.cleanup"}``: the task runs, without arguments, if it is
registered. Any other text that is not JSON is rejected (``not_json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, Protocol

from dispatcher.config import Limits, Security
from dispatcher.schema import CHUNK_KEY, MAX_MESSAGE_BYTES, SIGNED_KEY, new_uuid, validator
from dispatcher.schema.chunks import ChunkAssembler
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.held_refusals import RefusedAnswers, may_be_control
from dispatcher.server.intake_decoding import ChunkJoiner, PayloadDecoder
from dispatcher.server.intake_jobs import JobMaker
from dispatcher.server.intake_refusals import Refusals
from dispatcher.server.intake_rows import control_agrees_with_row
from dispatcher.server.intake_waiting import WaitingForWorkers
from dispatcher.server.jobs import Job
from dispatcher.server.large_payloads import LARGE_PAYLOAD_CHARS, LargePayload, LargePayloads
from dispatcher.server.log_records import get_logger
from dispatcher.server.origin import INTERNAL, PG_NOTIFY, Origin
from dispatcher.server.rejection import Rejected
from dispatcher.server.settlement import ABANDONED, Settlements
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.intake")


ControlSink = Callable[[dict[str, Any], str, Origin, Rejected | None], None]
"""Runs a control message, ``sink(message, channel, origin, refused)``, and answers it; with
*refused*, the message was refused and is only answered with the error. Otherwise, once it
has answered (maybe later: a command may take a while), it settles *origin*: ``ok``, or
``rejected`` with its reply's error (an unknown command, invalid ``control_data``)."""

_NOT_TASKS: Final = {
    "control": "a control command",
    CHUNK_KEY: "a chunk envelope",
    SIGNED_KEY: "a signed envelope",
}
"""Keys of the payloads a message made inside the service may not be: it is taken as a
task message with no broker's checks (no allow-list, no signature), so it may be nothing
else."""


class JobSink(Protocol):
    """Where accepted jobs go (the :class:`~dispatcher.server.scheduler.Scheduler`)."""

    def submit(self, job: Job) -> bool:
        """Take *job*; ``False`` if it was refused (counted and logged by the sink)."""


class Intake:
    """Turns received payloads into jobs for a :class:`JobSink`.

    Task messages that arrive before the registered task names are known (the first worker
    reports them to the *catalogue*) wait, and are released once they are.
    """

    def __init__(
        self,
        jobs: JobSink,
        stats: ServiceStats,
        chunk_expiry: float,
        on_control: ControlSink | None = None,
        limits: Limits | None = None,
        signatures: SignatureCheck | None = None,
        catalogue: TaskCatalogue | None = None,
        settlements: Settlements | None = None,
    ) -> None:
        self._jobs = jobs
        self._settlements = settlements or Settlements(())
        self.catalogue = catalogue or TaskCatalogue()
        """The registered task names (filled by the first worker)."""
        self.catalogue.on_known(self._release_waiting)
        self._on_control = on_control
        self._signatures = signatures or SignatureCheck(Security())
        self._stats = stats
        limits = limits or Limits()
        self.chunks = ChunkAssembler(
            expiry=chunk_expiry,
            max_bytes=MAX_MESSAGE_BYTES,
            max_messages=limits.max_partial_messages,
            max_memory=limits.max_partial_bytes,
        )
        self._task_validator = validator("task-message")
        self._refusals = Refusals(stats, self._settlements)
        self._decoder = PayloadDecoder()
        """Decodes payloads; its :attr:`~PayloadDecoder.ahead` holds the texts :attr:`large`
        decoded, taken instead of decoding them."""
        self._joiner = ChunkJoiner(self.chunks, self._refusals.lost)
        self._job_maker = JobMaker(self.catalogue, limits)
        self._waiting = WaitingForWorkers(limits)
        self._stopping = False
        self.large = LargePayloads(self._resume, self._take, limits.max_held_bytes)
        """Decodes large payloads in a worker thread while its :meth:`~LargePayloads.run`
        runs (the service runs it; without it, they are decoded here as they come)."""
        self._refused = RefusedAnswers(
            on_control, self._decoder, self._joiner, self.large, limits.max_partial_messages
        )

    def receive(self, payload: str, channel: str, origin: Origin = PG_NOTIFY) -> None:
        """Take one payload as it arrived on *channel* through *origin*; never raises.

        Payloads from one source are handed on in the order they arrived, large ones too
        (see :mod:`~dispatcher.server.large_payloads`).
        """
        self._stats.delivered[origin.broker or ""] += 1
        if self.large.holds(channel, origin):  # behind a large payload of its source being decoded
            try:
                self.large.hold(payload, channel, origin)
            except Rejected as rejected:
                self._refuse_held(rejected, payload, channel, origin)
            return
        self._take(payload, channel, origin)

    def _refuse_held(self, rejected: Rejected, payload: str, channel: str, origin: Origin) -> None:
        """Refuse *payload*, which could not be held behind a large one (not decoded yet).

        A control command among them is answered with the refusal, as other refused ones
        are (its client would wait for a reply until it timed out), in whichever form it
        came (see :mod:`~dispatcher.server.held_refusals`); but for one a durable broker
        delivers again (:meth:`Refusals.refuse` settles it ``refused``), whose reply comes
        once it is run.
        """
        if origin.receipt is None and may_be_control(payload):
            self._refused.answer(payload, channel, origin, rejected)
        self._refusals.refuse(rejected, channel, origin)

    def _take(self, payload: str, channel: str, origin: Origin) -> None:
        """Take *payload* on (see :meth:`receive`); never raises."""
        try:
            self._receive(payload, channel, origin)
        except Rejected as rejected:
            self._refusals.refuse(rejected, channel, origin)
        except Exception as exc:  # a bug here must cost one message, never the service
            self._refusals.internal_error(exc, channel, origin)

    def _resume(self, large: LargePayload) -> None:
        """Take on *large*, decoded in a worker thread; never raises.

        One that was refused is only answered, if it is a control command.
        """
        channel, origin = large.channel, large.origin
        self._decoder.ahead = large.decoded
        try:
            if large.refused is not None:
                message = self._decoder.decode(large.text)
                self._refused.answer_decoded(
                    message, channel, origin, large.refused, joined=large.joined
                )
                return
            self._unwrap(large.text, channel, origin, joined=large.joined)
        except Rejected as rejected:
            if large.refused is None:
                self._refusals.refuse(rejected, channel, origin)
        except Exception as exc:  # a bug here must cost one message, never the service
            self._refusals.internal_error(exc, channel, origin)
        finally:
            self._decoder.ahead = {}

    def submit(self, message: dict[str, Any], source: str) -> str:
        """Accept a task message made inside the service (a producer, the ``run`` command).

        Returns its uuid.

        :raises Rejected: when the message is refused, saying why.
        """
        if self._stopping:
            raise Rejected("stopping", "the service is stopping")
        for key, what in _NOT_TASKS.items():
            if key in message:
                raise Rejected("invalid_message", f"{key}: {what}, not a task message")
        message = {**message, "uuid": message.get("uuid") or new_uuid()}
        text = json.dumps(message, separators=(",", ":"))
        if not self._receive(text, source, INTERNAL, off_loop=False):
            raise Rejected("overloaded", "a limit of service.limits is reached (see the log)")
        return str(message["uuid"])

    def _receive(self, payload: str, channel: str, origin: Origin, off_loop: bool = True) -> bool:
        """Take one payload; ``False`` when the job sink refused its job (it says why).

        With *off_loop*, a large one (or the whole text of a chunked one) is decoded in a
        worker thread, and taken on from there (``True`` then).
        """
        large = off_loop and len(payload) >= LARGE_PAYLOAD_CHARS
        if large and self.large.decode_later(payload, channel, origin, joined=False):
            return True
        return self._unwrap(payload, channel, origin, off_loop=off_loop)

    def _unwrap(
        self,
        payload: str,
        channel: str,
        origin: Origin,
        *,
        joined: bool = False,
        off_loop: bool = True,
    ) -> bool:
        """:meth:`_receive` from the decoding on; *joined*: the whole text of chunks."""
        if joined:
            message = self._decoder.decode(payload)
            if CHUNK_KEY in message:
                raise Rejected("invalid_chunk", "a chunk envelope holds another chunk envelope")
        else:
            payload, message = self._decoder.decode_payload(payload)
        if CHUNK_KEY in message:  # (not in a joined text: refused above)
            if origin.receipt is not None:  # it could never be settled whole
                raise Rejected(
                    "invalid_chunk", "a durable broker delivers whole messages, not chunks"
                )
            whole = self._joiner.join(message)
            if whole is None:
                return True
            refused = self._refused.whole_refused(str(message["message_id"]))
            if refused is not None:  # a slice of it was refused: so is the whole
                self._refused.answer(whole, channel, origin, refused, joined=True)
                return True
            large = off_loop and len(whole) >= LARGE_PAYLOAD_CHARS
            if large and self.large.decode_later(whole, channel, origin, joined=True):
                return True
            return self._unwrap(whole, channel, origin, joined=True)
        try:
            payload, message = self._signatures.open(payload, message, origin, self._decoder.decode)
        except Rejected as rejected:
            if rejected.control is not None and self._on_control is not None:
                self._on_control(rejected.control, channel, origin, rejected)
            raise
        self._stats.received += 1
        if "control" in message:
            self._stats.received_control += 1
        else:
            self._stats.received_tasks += 1
        if "control" in message and origin.stored_as is not None:
            control_agrees_with_row(message, origin.stored_as)
        if "control" in message and self._on_control is not None:
            self._on_control(message, channel, origin, None)
            return True
        if "control" in message:
            raise Rejected(
                "control_unsupported",
                f"control command {message.get('control')!r}: control messages over a broker "
                "are not supported by this version of the service",
            )
        if not self._task_validator.is_valid(message):
            problems = "; ".join(str(p) for p in self._task_validator.problems(message))
            raise Rejected("invalid_message", problems, message.get("uuid"))
        if self.catalogue.names is None:
            self._waiting.hold(message, payload, channel, origin)
            return True
        return self._jobs.submit(self._job_maker.make(message, payload, channel, origin))

    @property
    def waiting(self) -> int:
        """Messages held in the intake: they wait for a worker, or for their source's turn.

        Task messages held until the first worker says which tasks are registered, and
        large payloads being decoded, with those held behind them (see :attr:`large`).
        """
        return len(self._waiting) + self.large.waiting

    def _release_waiting(self, names: frozenset[str]) -> None:
        """The registered task names are known: release what waited for them."""
        logger.info("%d registered tasks", len(names))
        for message, payload, channel, origin in self._waiting.release():
            try:
                self._jobs.submit(self._job_maker.make(message, payload, channel, origin))
            except Rejected as rejected:
                self._refusals.refuse(rejected, channel, origin)
            except Exception as exc:  # costs this message, never the others waiting
                self._refusals.internal_error(exc, channel, origin)

    def stop_accepting(self) -> None:
        """The service begins to stop: refuse messages made inside it (:meth:`submit`).

        Large payloads being decoded, and those held behind them, are given back (to be
        delivered again, where their broker can).
        """
        self._stopping = True
        for origin in self.large.close():
            self._settlements.origin(origin, ABANDONED)

    def close(self) -> None:
        """The service stops: give back the messages still waiting for the first worker."""
        for _, _, _, origin in self._waiting.release():
            self._settlements.origin(origin, ABANDONED)
