"""Collecting submissions made inside ``batch()`` to send them in one round trip.

A block's :class:`Batch` is current (``current_batch``) in its context, and in contexts
copied from it (an asyncio task started in the block, ``asyncio.to_thread``): what those
submit while the block runs joins it; once the block has ended, the batch is closed and
they join the block it was inside of, if that one still runs, else they send at once. A
block inside another one joins the outer batch when it ends (nothing, if it raises),
unless it was given a connection of its own.

A batch takes submissions only while it is usable: open, in the process that entered the
block, and its block still held by the ``with`` statement that entered it. That last one
is what makes a block abandoned by an exception that landed as its exit began (a signal
handler's, before the exit's first line ran: nothing of the exit ran) harmless: the
``with`` statement let go of it, so its batch, still current in the context, is passed
over: what is submitted next is sent at once, or joins the block still running around it.
Anything submitted where no batch is usable is sent at once, never held by a batch that
will not send it.

A batch is sent with the config in force where its block began, which its block's code uses
too (see ``dispatcher.config.using``), whatever another thread sets up meanwhile.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from dispatcher.config import Settings
from dispatcher.config.current import Using, in_force, override, restore
from dispatcher.config.forking import at_fork
from dispatcher.publish.errors import InvalidSubmission
from dispatcher.publish.submission import Submission
from dispatcher.schema import InvalidArgumentType

logger = logging.getLogger("dispatcher.publish")

_pid = os.getpid()
"""This process's id, kept up to date in forked children: asking costs a system call."""


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


at_fork(after_in_child=_after_fork_in_child)


def _held_for_ever() -> object:
    return True


@dataclass
class Batch:
    """Submissions collected by a ``batch()`` block, sent together when it ends.

    What ``with batch() as held:`` gives: read :attr:`submissions` (and :attr:`connection`,
    :attr:`closed`); the methods and the other attributes are the SDK's own, and calling them
    in the block (``close()``) changes what it sends, and in which order.
    """

    connection: object | None = None
    """The connection the batch is sent on, or ``None`` for the SDK's own."""
    submissions: list[Submission] = field(default_factory=list)
    """Everything submitted in the block so far, in order."""
    closed: bool = False
    """Whether the block has ended: nothing joins the batch any more."""
    pid: int = field(default_factory=lambda: _pid)
    """The process that entered the block: only it sends the batch."""
    parent: Batch | None = field(default=None, repr=False, compare=False)
    """The batch usable where the block began (its outer block's), if any: what is
    submitted where this one is not usable any more goes there, while it is."""
    holder: Callable[[], object | None] = field(default=_held_for_ever, repr=False, compare=False)
    """A weak reference to what the ``with`` statement that entered the block holds while
    the block runs (see :class:`BlockExit`): ``None`` once it is gone."""
    settings: Settings | None = field(default=None, repr=False, compare=False)
    """The config in force where the block began, which its code uses and the batch is sent
    with (``None``: none was in force then; the one in force when it is sent)."""
    # Re-entrant: a signal handler (or a __del__) submitting in the thread it interrupted
    # may find that thread adding to the batch.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        """Whether submissions may join it: open, here, and its block not abandoned.

        Here: in the process that entered the block. Abandoned: let go of by the ``with``
        statement that entered it without its exit having run.
        """
        return not self.closed and self.pid == _pid and self.holder() is not None

    @property
    def inherited(self) -> bool:
        """Whether this process was forked inside the block: the batch is the parent's."""
        return self.pid != _pid

    def add(self, submissions: Sequence[Submission]) -> bool:
        """Add *submissions* unless the batch is not usable; tell whether they were added."""
        if self.pid != _pid:
            return False  # (its lock may have been held by another thread at the fork)
        if self.holder() is None:
            return False  # abandoned: never sent
        with self._lock:
            if self.closed:
                return False
            self.submissions.extend(submissions)
            return True

    def close(self) -> list[Submission]:
        """Close the batch; return what it holds (nothing in a process forked in the block)."""
        if self.pid != _pid:
            self.closed = True
            return []
        with self._lock:
            self.closed = True
            return list(self.submissions)


current_batch: ContextVar[Batch | None] = ContextVar("dispatcher_current_batch", default=None)
"""The batch of the innermost ``batch()`` block entered in this thread or task, if any: it
may be closed or abandoned since (see :func:`current`)."""


def current() -> Batch | None:
    """The innermost usable batch of this context, if any."""
    batch = current_batch.get()
    while batch is not None and not batch.usable:
        batch = batch.parent
    return batch


def collect(submission: Submission, connection: object | None) -> bool:
    """Add *submission* to the innermost usable batch, if any; tell whether it was added.

    :raises TypeError: when a connection is passed to a single call inside a batch.
    :raises InvalidSubmission: when it was prepared under another config than the batch's
        (a ``using()`` block inside the ``batch()`` block).
    """
    batch = current_batch.get()
    while batch is not None:
        if connection is not None and batch.usable:
            raise InvalidArgumentType(
                "inside batch(), pass connection= to batch(), not to each submission"
            )
        settings = batch.settings
        if settings is not None and settings is not in_force() and batch.usable:
            raise InvalidSubmission(
                f"cannot submit {submission.message.get('task')} inside batch(): it was"
                f" prepared under another config than the batch's ({settings.source}), which"
                " sends it to its own brokers: open the batch() inside the using() block"
            )
        if batch.add([submission]):
            return True
        batch = batch.parent
    return False


def join(
    batch: Batch | None,
    submissions: Sequence[Submission],
    connection: object | None,
    settings: Settings | None,
) -> bool:
    """Add a block's *submissions* to the batch it joins; tell whether they were added.

    That is *batch*, the batch usable where the block began, or the innermost batch still
    usable around that one.

    A block with a *connection* of its own joins only a batch on that connection: else it
    sends in that connection's transaction itself. So does a block under another config
    than the batch's (*settings*, the block's): its submissions go to other brokers.
    """
    while batch is not None:
        if connection is not None and connection is not batch.connection:
            return False
        if settings is not None and batch.settings is not None and settings is not batch.settings:
            return False
        if batch.add(submissions):
            return True
        batch = batch.parent
    return False


def ending(batch: Batch) -> list[Submission]:
    """Close the batch of a block ending well; return what it is to send.

    Nothing in a process forked inside the block (its submissions from before the fork are
    the parent's, which sends them; those made here since were sent at once): said
    as a warning: the block's all or nothing did not hold here.
    """
    submissions = batch.close()
    if batch.inherited:
        logger.warning(
            "a batch() block entered before this process was forked (pid %d) ended in the"
            " child (pid %d): its submissions from before the fork are the parent's to"
            " send, and are not sent again here; those made in the child were sent at once",
            batch.pid,
            _pid,
        )
    return submissions


class BlockState:
    """A block's entry: what its exit needs, apart from the block object (see BlockExit)."""

    __slots__ = ("batch", "config_token", "connection", "exit_ref", "token")

    def __init__(self, connection: object | None) -> None:
        self.connection = connection
        self.batch: Batch | None = None
        """The block's batch, once entered."""
        self.token: Token[Batch | None] | None = None
        """What puts the batch current before the block back, until the block has ended."""
        self.config_token: Token[Any] | None = None
        """What gives back the config in force before the block, until the block has ended."""
        self.exit_ref: weakref.ref[Callable[..., object]] | None = None
        """The exit the ``with`` statement looked up just before entering the block."""


class Block:
    """What ``BatchBlock`` and ``AsyncBatchBlock`` share: entering, and the state."""

    __slots__ = ("__weakref__", "_state")

    def __init__(self, connection: object | None) -> None:
        self._state = BlockState(connection)

    def _enter(self) -> Batch:
        """Make a new batch current; return it.

        :raises RuntimeError: when the block was entered before.
        """
        state = self._state
        if state.batch is not None:
            raise RuntimeError(
                "this batch() block was entered already: a block is entered once (each"
                " with statement takes a batch() of its own)"
            )
        exit_ref = state.exit_ref
        # Held by the with statement while the block runs, and let go of when it is left,
        # however; else (entered by hand, or by an ExitStack) the block object is.
        holder = exit_ref if exit_ref is not None and exit_ref() is not None else weakref.ref(self)
        previous = current_batch.get()
        settings = in_force()
        batch = state.batch = Batch(
            connection=state.connection, parent=current(), holder=holder, settings=settings
        )
        # Made current last, and undone on any exception until the block has it: one a
        # signal handler raises (KeyboardInterrupt, a task's cancel, a deadline) as set()
        # returns leaves no batch open behind it. The block's config is the batch's while
        # the batch is usable only: even left behind, it ends with the block.
        try:
            if settings is not None:
                state.config_token = override(settings, lambda: batch.usable)
            state.token = current_batch.set(batch)
            return batch
        except BaseException:
            batch.close()
            if state.token is not None:
                current_batch.reset(state.token)
            elif current_batch.get() is batch:  # (interrupted as set() returned)
                current_batch.set(previous)
            if state.config_token is not None:
                restore(state.config_token)
                state.config_token = None
            raise


def leave(state: BlockState, ok: bool) -> list[Submission]:
    """Close the batch of a block ending; return what the block is to send itself.

    Nothing when the block raised (*ok* false), or when it joined an outer batch.

    :raises RuntimeError: when the block is not entered (or was left already).
    """
    batch, token = state.batch, state.token
    if batch is None or token is None:
        raise RuntimeError("this batch() block is not entered: nothing to leave")
    try:
        if not ok:
            batch.close()  # what copies of the context submit later goes elsewhere
            return []
        submissions = ending(batch)
    finally:
        state.token = None
        current_batch.reset(token)
        config_token, state.config_token = state.config_token, None
        if config_token is not None:
            restore(config_token)
    if join(batch.parent, submissions, state.connection, batch.settings):
        return []
    return submissions


def sending_config(state: BlockState) -> AbstractContextManager[object]:
    """The block that sends a block's batch with its config: the one in force where it began."""
    settings = None if state.batch is None else state.batch.settings
    return nullcontext() if settings is None else Using(settings)


R = TypeVar("R")
ExitFunction = Callable[
    [BlockState, type[BaseException] | None, BaseException | None, TracebackType | None], R
]


class BlockExit(Generic[R]):
    """A block's ``__exit__`` (or ``__aexit__``): an exit holding the state, not the block.

    What it gives, the ``with`` statement holds while the block runs, and lets go of when it
    leaves it, however: even when an exception a signal handler raises lands as the exit
    begins (before its first line: nothing of it runs). The block's batch lives as long as
    that, and no longer (:attr:`Batch.holder`); the block object itself may outlive the
    statement: the exit's frame, kept by the exception's traceback, holds it. (Looked up on
    the class, as ``contextlib.ExitStack`` does, it is the plain function.)
    """

    def __init__(self, function: ExitFunction[R]) -> None:
        self._function = function

        @functools.wraps(function)
        def exit_of(
            block: Block,
            kind: type[BaseException] | None,
            value: BaseException | None,
            traceback: TracebackType | None,
        ) -> R:
            return function(block._state, kind, value, traceback)

        self._unbound = exit_of

    @overload
    def __get__(
        self, block: None, owner: type[Block]
    ) -> Callable[
        [Block, type[BaseException] | None, BaseException | None, TracebackType | None], R
    ]: ...

    @overload
    def __get__(
        self, block: Block, owner: type[Block] | None = None
    ) -> Callable[[type[BaseException] | None, BaseException | None, TracebackType | None], R]: ...

    def __get__(self, block: Block | None, owner: type[Block] | None = None) -> Callable[..., R]:
        if block is None:
            return self._unbound
        state = block._state
        exit = functools.partial(self._function, state)
        if state.batch is None:  # the with statement's, about to enter the block
            state.exit_ref = weakref.ref(exit)
        return exit
