"""The attributes the dispatcher's log records carry beside their message (``extra=``).

A handler reads a task's facts from the record instead of parsing its text:
``record.dispatcher_uuid``, ``record.dispatcher_outcome``. Every name starts with
``dispatcher_``, so none can clash with an attribute of :class:`logging.LogRecord` (which
``extra=`` may not replace) or with an application's own. A record has only the attributes
that apply to it (a service's start names no task); ``dispatcher-standalone --log-format
json`` writes them as keys of the same names. docs/logging.md lists which record has which.
"""

from __future__ import annotations

from typing import Final

EVENT: Final = "dispatcher_event"
"""What happened, as a fixed word (:data:`EVENTS`): what to filter on."""
TASK: Final = "dispatcher_task"
"""The task's registered name."""
UUID: Final = "dispatcher_uuid"
"""The task message's uuid."""
WORKER: Final = "dispatcher_worker"
"""The worker's id (``0``, ``1``...): on the records about a task run, and on every record a
worker process writes itself."""
OUTCOME: Final = "dispatcher_outcome"
"""How a run ended (``ok``, ``error``, ``timeout``...: :class:`~dispatcher.schema.Outcome`)."""
DURATION: Final = "dispatcher_duration"
"""How long the task ran, in seconds (a float)."""
BROKER: Final = "dispatcher_broker"
"""The broker it came through (``pg_notify``, ``pg_queue``, ``socket``, a plug-in's);
``None`` for a task made inside the service (a schedule, the ``run`` command)."""
QUEUE: Final = "dispatcher_queue"
"""The channel or durable queue it came on (``socket:3``: a socket connection); ``None`` for
a task made inside the service."""
ATTEMPT: Final = "dispatcher_attempt"
"""Which attempt of a durable job this is (``1`` for the first); only for brokers that count
attempts (pg_queue)."""
ERROR: Final = "dispatcher_error"
"""Why a run failed, as the worker reported it (``ValueError: ...``)."""
TRACEBACK: Final = "dispatcher_traceback"
"""A failed run's traceback, whole: several lines of text, unescaped (the record's message
shows it escaped and indented)."""
REASON: Final = "dispatcher_reason"
"""Why a message was rejected: the key it is counted under (``not_json``,
``unknown_task``...)."""
NODE: Final = "dispatcher_node"
"""The service's node id."""

ATTRIBUTES: Final = (
    EVENT,
    TASK,
    UUID,
    WORKER,
    OUTCOME,
    DURATION,
    BROKER,
    QUEUE,
    ATTEMPT,
    ERROR,
    TRACEBACK,
    REASON,
    NODE,
)
"""Every attribute name above."""

EVENTS: Final = (
    "task_submitted",
    "task_received",
    "task_started",
    "task_timeout",
    "task_terminating",
    "task_finished",
    "task_failed",
    "task_lost",
    "task_abandoned",
    "task_discarded",
    "message_rejected",
    "service_started",
    "service_stopping",
    "service_stopped",
    "log_lines_dropped",
)
"""Every value of :data:`EVENT`: a task sent by a publisher (DEBUG), received by the service
(DEBUG), started, past its timeout (being cancelled), still running after its cancel (its
worker being stopped), ended (``task_finished``; ``task_failed`` when it raised;
``task_lost`` with its worker; ``task_abandoned`` still running when the shutdown grace
ran out), dropped by its ``on_duplicate`` (DEBUG); a message rejected; the service started,
told to stop, stopped; lines of the service's log dropped, its reader behind."""
