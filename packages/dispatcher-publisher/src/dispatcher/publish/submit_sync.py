"""Sending task messages from synchronous code.

Generated from ``submit_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import Connection

from dispatcher.publish.batching import Batch, collect, current_batch
from dispatcher.publish.connections import (
    NOTIFY_MANY,
    abandon,
    connect_options,
    expect_connection,
    publisher_conninfo,
    sync_owner,
    unavailable,
)
from dispatcher.publish.messages import Submission, prepare_submission
from dispatcher.publish.registry import OnDuplicate, Queue


class ConnectionProvider:
    """The SDK's own autocommit connection: opened on first use, shared, re-opened when lost.

    Concurrent callers share it; a process forked after first use opens its own.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._lock = threading.Lock()  # held only while no I/O runs
        self._connection: Connection[Any] | None = None
        self._owner: tuple[int, ...] = ()

    def connection(self) -> Connection[Any]:
        """Return the open connection, opening one if there is none usable here.

        :raises BrokerUnavailable: when the database cannot be reached.
        """
        owner = sync_owner()
        current = self._connection
        if current is not None and self._owner == owner and not current.closed:
            return current
        try:
            fresh = Connection.connect(self.conninfo, **connect_options(self.conninfo))
        except psycopg.Error as exc:
            raise unavailable(self.conninfo, exc, "connect to") from None
        with self._lock:
            current = self._connection
            if current is not None and self._owner == owner and not current.closed:
                winner: Connection[Any] | None = current
            else:
                if current is not None and self._owner != owner:
                    abandon(current, self._owner)
                self._connection, self._owner, winner = fresh, owner, None
        if winner is None:
            return fresh
        fresh.close()  # another caller opened one meanwhile
        return winner

    def notify_many(self, channels: Sequence[str], payloads: Sequence[str]) -> None:
        """NOTIFY each payload on its channel, in one round trip.

        A connection found broken (the server restarted, the connection was terminated) is
        replaced and the NOTIFYs sent once more on the new one.

        :raises BrokerUnavailable: when the database cannot be reached.
        """
        for attempt in (1, 2):
            own = self.connection()
            try:
                own.execute(NOTIFY_MANY, (list(channels), list(payloads)))
                return
            except psycopg.OperationalError as exc:
                if attempt == 2 or not own.closed:
                    raise unavailable(self.conninfo, exc, "send to") from None
            except psycopg.Error as exc:
                raise unavailable(self.conninfo, exc, "send to") from None

    def close(self) -> None:
        """Close the connection (one opened elsewhere is only let go of)."""
        with self._lock:
            current, owner = self._connection, self._owner
            self._connection, self._owner = None, ()
        if current is None:
            return
        if owner == sync_owner():
            current.close()
        else:
            abandon(current, owner)


_providers: dict[str, ConnectionProvider] = {}
_providers_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held forever in the child.
    global _providers_lock
    _providers_lock = threading.Lock()
    for provider in _providers.values():
        provider._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _provider(conninfo: str) -> ConnectionProvider:
    with _providers_lock:
        provider = _providers.get(conninfo)
        if provider is None:
            provider = _providers[conninfo] = ConnectionProvider(conninfo)
        return provider


def close_connections() -> None:
    """Close the SDK's own connections (they re-open on the next submission).

    Call it when an application shuts down, or in tests between event loops.
    """
    with _providers_lock:
        providers = list(_providers.values())
    for provider in providers:
        provider.close()


def send(submissions: Sequence[Submission], connection: object | None = None) -> None:
    """Send prepared submissions in one statement.

    With *connection*, the NOTIFYs join its current transaction: delivered when it commits,
    never if it rolls back. Without, the SDK's own connection sends them at once; a lost
    connection is re-opened and the send retried once.

    :raises BrokerUnavailable: when the database cannot be reached or refuses the NOTIFY.
    """
    if not submissions:
        return
    channels = [s.channel for s in submissions for _ in s.payloads]
    payloads = [payload for s in submissions for payload in s.payloads]
    if connection is not None:
        caller = expect_connection(connection, Connection, "submit_task", "asubmit_task")
        caller.execute(NOTIFY_MANY, (channels, payloads))
        return
    _provider(publisher_conninfo()).notify_many(channels, payloads)


def submit_task(
    task: str | Callable[..., Any],
    /,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue: Queue = None,
    uuid: str | None = None,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    bind: bool | None = None,
    extra: Mapping[str, Any] | None = None,
    connection: Connection[Any] | None = None,
) -> Submission:
    """Submit one task; return what was sent.

    *task* is a function registered with ``@task`` or a task name such as
    ``"myapp.tasks.send_email"`` (the task's code need not be importable here). Options left
    as ``None`` take the defaults given to ``@task``:

    - *queue*: the channel, or a function returning it; default: ``@task(queue=...)``, else
      ``brokers.pg_notify.default_publish_channel``, else the only configured channel;
    - *uuid*: the submission's identifier (default: a new UUID4);
    - *timeout*: seconds the task may run; *delay*: seconds before it starts;
    - *on_duplicate*: ``parallel``, ``discard``, ``serial`` or ``queue_one``;
    - *bind*: pass the task an object with its uuid and a ``control()`` call;
    - *extra*: more top-level keys for the message (e.g. ``{"guid": ...}``);
    - *connection*: send inside this connection's transaction (delivered on commit only).

    Everything is checked before sending; inside a ``batch()`` block the message is only
    queued and leaves when the block ends.

    :raises InvalidSubmission: when an option or argument is wrong (nothing is sent).
    :raises BrokerUnavailable: when the database cannot be reached.
    """
    submission = prepare_submission(
        task,
        args=args,
        kwargs=kwargs,
        queue=queue,
        uuid=uuid,
        timeout=timeout,
        delay=delay,
        on_duplicate=on_duplicate,
        bind=bind,
        extra=extra,
    )
    if not collect(submission, connection):
        send([submission], connection)
    return submission


@contextmanager
def batch(connection: Connection[Any] | None = None) -> Iterator[Batch]:
    """Collect the submissions made in the block and send them in one round trip at its end.

    Calls inside the block return their :class:`Submission` at once. If the block raises,
    nothing is sent. With *connection*, the batch joins that connection's transaction.
    """
    batch = Batch(connection=connection)
    token = current_batch.set(batch)
    try:
        yield batch
    finally:
        current_batch.reset(token)
    send(batch.submissions, connection)
