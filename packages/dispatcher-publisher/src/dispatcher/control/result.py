"""What a control request returns.

How each payload on the reply channel is taken as a reply is in
:mod:`dispatcher.control.reply_parsing`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.control.reply_parsing import (
    MAX_PENDING_CHUNKED_REPLIES,
    InvalidReply,
    ReplyChunks,
    ReplyTooLarge,
    parse_reply,
)
from dispatcher.schema import MAX_WHOLE_NODE_ID_BYTES, matches_node_id

__all__ = [  # the reply's parsing (InvalidReply...) named here, defined in reply_parsing
    "MAX_CONTROL_TIMEOUT",
    "MAX_PENDING_CHUNKED_REPLIES",
    "ControlResult",
    "InvalidReply",
    "ReplyChunks",
    "ReplyTooLarge",
    "counted_replies",
    "duplicate_node_id",
    "entries",
    "parse_reply",
]

logger = logging.getLogger("dispatcher.control")

MAX_CONTROL_TIMEOUT: Final = 31_536_000
"""The longest wait for replies, in seconds (365 days): ``timeout`` and ``dispatcherctl
--timeout`` take no more (the socket's wait cannot be longer than about 290 years, and no
one waits that long for a reply)."""


@dataclass
class ControlResult:
    """The replies to one control request, and who did not answer.

    It also behaves as the list of :attr:`replies`, as dispatcherd's control calls return
    one: ``len()``, iteration, indexing, ``in``, and equality with a list. Like an empty
    list, it is false when no reply came.
    """

    command: str
    replies: list[dict[str, Any]] = field(default_factory=list)
    """One dict per answering service, each with its ``node_id``."""
    expected: int = 0
    """How many replies were waited for."""
    expected_nodes: list[str] = field(default_factory=list)
    """The node ids of the services found running (when they were looked up), as read from
    their connections' ``application_name``: cut short past
    :data:`~dispatcher.schema.MAX_WHOLE_NODE_ID_BYTES`."""
    uncertain_nodes: list[str] = field(default_factory=list)
    """The node ids of the services found running that may or may not listen on the channel
    the command went to: they listen on so many channels that their connections' names
    cannot tell (see :data:`~dispatcher.schema.MAX_TELLING_DIGEST_BITS`). They are waited
    for as well, but not as long, and are never :attr:`missing`: those that did not answer
    are :attr:`unconfirmed`."""
    unlisted_nodes: list[str] = field(default_factory=list)
    """The node ids among :attr:`expected_nodes` whose connections' names list no channels
    (carry no digest of them), as those of services of an older release do. Where they
    listen cannot be told: they are waited for whatever the channel, as clients always did,
    and one that serves other channels only does not answer, and is :attr:`missing`."""
    through_pooler: bool = False
    """Whether the replies were waited for through a pooler (pgbouncer, say: the process id
    the server gave at connection was not its session's). One in transaction mode loses
    every reply: those that did not come may have been sent."""
    skipped: list[str] = field(default_factory=list)
    """Why payloads on the reply channel were not taken as replies (not JSON, nested too
    deeply, not a control reply, an invalid chunk envelope): anyone may NOTIFY that
    channel."""
    too_large: int = 0
    """Replies that came but were not taken, being over
    :data:`~dispatcher.schema.MAX_MESSAGE_BYTES` (each also noted in :attr:`skipped`). Our
    services keep their replies under it; one from elsewhere (an older version, dispatcherd)
    may not. Whose they were is not known: a reply names its service only once whole."""
    arriving: int = 0
    """Replies still arriving (some of their chunk envelopes had come) when the wait ran
    out, and so not taken (each also noted in :attr:`skipped`): a longer timeout lets them
    come whole."""
    _chunks: ReplyChunks = field(init=False, repr=False, compare=False)

    @property
    def missing(self) -> list[str]:
        """Node ids of services that were expected and did not answer.

        Each reply stands for one service: two services with one node id need two replies
        (see :attr:`duplicates`).
        """
        return _unanswered(self.expected_nodes, self._answered())

    @property
    def unconfirmed(self) -> list[str]:
        """Node ids of the :attr:`uncertain_nodes` that did not answer (in time).

        Most likely they do not listen on the channel the command went to; they may also
        have been too slow, or stuck.
        """
        left = self._answered()
        _unanswered(self.expected_nodes, left)
        return _unanswered(self.uncertain_nodes, left)

    @property
    def unexpected(self) -> list[str]:
        """Node ids that answered without being among the services found.

        The services found are :attr:`expected_nodes` and :attr:`uncertain_nodes`. Empty
        when the services were not looked up. A dispatcherd service answers too, but cannot
        be found in the database beforehand (its connections bear no name).
        """
        found = self.expected_nodes + self.uncertain_nodes
        if not found:
            return []
        answered = self._answered()
        return [node for node in answered if not any(matches_node_id(seen, node) for seen in found)]

    @property
    def duplicates(self) -> list[str]:
        """Node ids that more than one service uses, as far as can be told.

        Those found more than once among the services looked up (whole, not cut short:
        see :data:`~dispatcher.schema.MAX_WHOLE_NODE_ID_BYTES`), or that answered more than
        once. Replies cannot tell such services apart: give each its own node id.
        """
        found = Counter(
            node
            for node in self.expected_nodes + self.uncertain_nodes
            if len(node) < MAX_WHOLE_NODE_ID_BYTES
        )
        most = found | Counter(self._answered())
        return sorted(node for node, count in most.items() if count > 1)

    def _answered(self) -> list[str]:
        return [str(reply.get("node_id")) for reply in self.replies]

    def __post_init__(self) -> None:
        self._chunks = ReplyChunks()

    def __len__(self) -> int:
        """How many replies came."""
        return len(self.replies)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Iterate over the replies."""
        return iter(self.replies)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The reply at *index* (a slice gives a list of replies)."""
        return self.replies[index]

    def __contains__(self, reply: object) -> bool:
        """Tell whether *reply* is among the replies."""
        return reply in self.replies

    def __eq__(self, other: object) -> bool:
        """Equal to a list holding the same replies, or to a result with the same fields."""
        if isinstance(other, list):
            return self.replies == other
        if isinstance(other, ControlResult):
            return (
                self.command,
                self.replies,
                self.expected,
                self.expected_nodes,
                self.uncertain_nodes,
                self.skipped,
            ) == (
                other.command,
                other.replies,
                other.expected,
                other.expected_nodes,
                other.uncertain_nodes,
                other.skipped,
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def add(self, payload: str | bytes) -> None:
        """Take one payload from the reply channel: a reply, or a note in :attr:`skipped`.

        A reply may come cut into chunk envelopes (dispatcherd's format, over the socket
        beyond 1 kB, over pg_notify beyond 8 kB): each envelope is one payload, and the reply
        is taken once its last one has come, in any order.
        """
        try:
            whole = self._chunks.join(payload)
            if whole is not None:
                self.replies.append(parse_reply(whole))
        except InvalidReply as exc:
            if isinstance(exc, ReplyTooLarge):
                self.too_large += 1
            self._skip(str(exc))

    def finish(self, ran_out_after: float | None = None) -> None:
        """Note in :attr:`skipped` the chunked replies still missing envelopes.

        Call it once no more payloads will come (the wait is over); *ran_out_after*, the
        timeout, when the wait ended because it ran out: such replies were most likely still
        arriving (a long reply takes a while), which the note says, with what to do
        (:attr:`arriving` counts them). Also logs a warning for each node id in
        :attr:`duplicates`.
        """
        for node in self.duplicates:
            logger.warning("%s", duplicate_node_id(node))
        incomplete = self._chunks.incomplete
        if incomplete and ran_out_after is not None and not self.complete:
            self.arriving = incomplete
            it, was, them = ("it", "was", "it") if incomplete == 1 else ("they", "were", "them")
            self.skipped.append(
                f"skipped {counted_replies(incomplete)}: the wait ran out (after "
                f"{ran_out_after:g} s) while {it} {was} still arriving, in chunk envelopes; "
                f"a longer timeout (dispatcherctl --timeout) lets {them} come whole"
            )
            logger.warning("%s", self.skipped[-1])
        elif incomplete == 1:
            self._skip("a chunked reply is missing some of its chunk envelopes")
        elif incomplete:
            self._skip(f"{incomplete} chunked replies are missing some of their chunk envelopes")

    def _skip(self, reason: str) -> None:
        note = f"skipped a reply: {reason}"
        self.skipped.append(note)
        logger.warning("%s", note)

    @property
    def complete(self) -> bool:
        """Tell whether every expected service answered.

        When the services were looked up, each of them must have answered: a reply from
        another (a dispatcherd service, say) does not stand in for one.
        """
        return len(self.replies) >= self.expected and not self.missing

    @property
    def settled(self) -> bool:
        """Tell whether there is nothing left to wait for.

        :attr:`complete`, and every one of the :attr:`uncertain_nodes` answered.
        """
        return self.complete and not self.unconfirmed


def counted_replies(count: int) -> str:
    """*count* replies, in words: ``a reply``, ``2 replies``."""
    return "a reply" if count == 1 else f"{count} replies"


def duplicate_node_id(node: str) -> str:
    """What to say of *node*, a node id among :attr:`ControlResult.duplicates`."""
    return (
        f"more than one service has the node id {node!r}: their replies cannot be told "
        "apart; give each its own (service.node_id, or the DISPATCHER_NODE_ID environment "
        "variable)"
    )


def _unanswered(nodes: list[str], answered: list[str]) -> list[str]:
    """The *nodes* left without a reply of their own; takes the replies used from *answered*.

    Each reply stands for one node: a node id two services share needs two replies. A
    reply goes to a node of its very id before one it matches only by the start (a node id
    seen cut short).
    """
    waiting = []
    for node in nodes:
        if node in answered:
            answered.remove(node)
        else:
            waiting.append(node)
    unanswered = []
    for node in waiting:
        reply = next((reply for reply in answered if matches_node_id(node, reply)), None)
        if reply is None:
            unanswered.append(node)
        else:
            answered.remove(reply)
    return unanswered


def entries(reply: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries of a ``running``, ``cancel``, ``workers`` or ``aio_tasks`` reply.

    Those replies have one key per task (``worker-0``, ``queued-3``, ``blocked-0``,
    ``delayed-1``), per worker (``worker-0``) or per asyncio task, beside ``node_id``; this
    returns them alone, in order.
    """
    return {k: v for k, v in reply.items() if k != "node_id" and isinstance(v, dict)}
