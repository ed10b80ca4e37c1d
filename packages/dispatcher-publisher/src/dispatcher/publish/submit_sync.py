"""Sending task messages from synchronous code.

Generated from ``submit_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from psycopg import Connection

from dispatcher.publish.batching import Batch, collect, current_batch
from dispatcher.publish.messages import Submission, prepare_submission
from dispatcher.publish.registry import Queue
from dispatcher.publish.routing import plan
from dispatcher.schema import OnDuplicate


def send(submissions: Sequence[Submission], connection: object | None = None) -> None:
    """Send prepared submissions, each through the broker its queue goes to.

    Over pg_notify they go in one statement: with *connection*, the NOTIFYs join its
    current transaction (delivered when it commits, never if it rolls back); without, the
    SDK's own connection sends them at once, and a lost connection is re-opened and the send
    retried once. See :mod:`dispatcher.publish.routing` for how the broker is chosen.

    :raises BrokerUnavailable: when the broker cannot be reached or refuses the message.
    """
    if not submissions:
        return
    for broker, messages in plan([(s.channel, s.payloads) for s in submissions], connection):
        broker.send(messages, connection)


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
