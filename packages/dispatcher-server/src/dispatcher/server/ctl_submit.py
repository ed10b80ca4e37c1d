"""``dispatcherctl submit``: publish one task, as the SDK's ``submit_task`` does.

It is an ordinary submission (no control command, so the services need no
``producers.control``): checked before it is sent, over pg_notify or stored as a job for a
durable queue. The exit status is 0 when sent, 1 when the broker cannot be reached, and 2
for a bad option, an unknown queue or a submission the SDK refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Final

import psycopg

from dispatcher.config import Settings, install
from dispatcher.publish import (
    BrokerUnavailable,
    InvalidSubmission,
    PublishError,
    close_connections,
    submit_task,
)
from dispatcher.publish.broker_errors import broker_unavailable
from dispatcher.publish.brokers import is_job_broker
from dispatcher.publish.connection_settings import connection_options
from dispatcher.publish.message_routes import no_default_queue
from dispatcher.publish.routing import broker_for, default_broker, publish_broker
from dispatcher.schema import ON_DUPLICATE_MODES
from dispatcher.server import queue_admin
from dispatcher.server.ctl_arguments import Text, count, json_list, json_object, seconds
from dispatcher.server.log_text import escape

EXIT_OK: Final = 0
EXIT_UNREACHABLE: Final = 1
EXIT_USAGE: Final = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``dispatcherctl submit``."""
    parser.add_argument("task", action=Text, help="the task's name, such as myapp.tasks.cleanup")
    parser.add_argument(
        "--args", type=json_list, default=None, metavar="JSON", help="positional arguments"
    )
    parser.add_argument(
        "--kwargs", type=json_object, default=None, metavar="JSON", help="keyword arguments"
    )
    parser.add_argument(
        "--queue",
        action=Text,
        metavar="Q",
        help="a channel or durable queue of the config (default: its default)",
    )
    parser.add_argument(
        "--uuid", action=Text, metavar="U", help="the submission's uuid (default: a new one)"
    )
    parser.add_argument(
        "--delay", type=seconds, metavar="S", help="seconds to wait before the task starts"
    )
    parser.add_argument(
        "--timeout",
        dest="task_timeout",
        type=seconds,
        metavar="S",
        help="seconds the task may run",
    )
    parser.add_argument(
        "--on-duplicate",
        choices=ON_DUPLICATE_MODES,
        help="what to do when an identical task is queued or running",
    )
    parser.add_argument(
        "--max-attempts",
        type=count,
        metavar="N",
        help="durable queues: times the job may start (default: the queue's "
        "brokers.pg_queue.max_attempts is stored, and the services apply the task's "
        "@task(max_attempts=...) instead; a value other than the queue's wins)",
    )


def configured_queues(settings: Settings) -> list[str]:
    """The queues the config names: pg_notify's channels, the durable queues, plug-ins'.

    In the config's order where a broker keeps one (pg_notify's channels), else sorted (the
    durable queues), so that a message listing them reads the same every time.
    """
    queues: dict[str, None] = {}
    for name in settings.brokers.names:
        try:
            broker = publish_broker(name, settings)
        except PublishError:
            continue  # the send says why, if the task goes there
        listed = broker.queues
        queues.update(dict.fromkeys(listed if isinstance(listed, Sequence) else sorted(listed)))
        if broker.default_queue is not None and name != "socket":
            queues[broker.default_queue] = None
    return list(queues)


def run(settings: Settings, options: argparse.Namespace) -> int:
    """Submit the task of *options*; print its uuid and where it went; return the status."""
    queue: str | None = options.queue
    if queue is None:
        refusal = _no_default_queue(settings, options.task)
        if refusal is not None:
            return _fail(refusal, EXIT_USAGE)
    else:
        known = configured_queues(settings)
        if queue not in known:
            listed = ", ".join(known) if known else "none"
            return _fail(
                f"unknown queue {queue!r}: {settings.source} names no such channel or durable "
                f"queue (its queues: {listed})",
                EXIT_USAGE,
            )
    unready = _tables_refusal(settings, queue)
    if unready is not None:
        return _fail(*unready)
    # The command line has no application transaction to join: an application's
    # connection factory (its web framework's connection) is not called here.
    install(settings.without_connection_factories())
    try:
        submission = submit_task(
            options.task,
            args=options.args,
            kwargs=options.kwargs,
            queue=queue,
            uuid=options.uuid,
            timeout=options.task_timeout,
            delay=options.delay,
            on_duplicate=options.on_duplicate,
            max_attempts=options.max_attempts,
        )
    except InvalidSubmission as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BrokerUnavailable as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except PublishError as exc:
        return _fail(str(exc), EXIT_USAGE)
    finally:
        close_connections()  # not left for the interpreter's exit, which warns of it
    broker = broker_for(submission.channel, settings)
    durable = is_job_broker(broker)
    if options.json:
        shown = {
            "uuid": submission.uuid,
            "queue": submission.channel,
            "broker": broker.name,
            "durable": durable,
            "message": dict(submission.message),
        }
        print(json.dumps(shown, indent=2, sort_keys=True))
        return EXIT_OK
    where = "durable queue: stored as a job" if durable else "channel"
    print(f"uuid: {escape(submission.uuid, limit=None)}")
    print(f"task: {escape(options.task, limit=None)}")
    print(f"queue: {escape(submission.channel, limit=None)} ({broker.name} {where})")
    return EXIT_OK


def _tables_refusal(settings: Settings, queue: str | None) -> tuple[str, int] | None:
    """Why a job for the durable *queue* (``None``: the default) cannot be stored, if it cannot.

    With the exit status: the tables are not migrated (missing, or older than this version
    needs), as ``dispatcherctl migrate`` would tell, or the database cannot be reached. (The
    SDK's insert does not check their version: an older table takes the row, for services
    that refuse to start on it.) ``None`` for a channel, or when the tables cannot be
    checked otherwise (the submission then says why).
    """
    section = settings.brokers.pg_queue
    if section is None:
        return None
    if queue is None:
        try:
            queue = default_broker(settings).default_queue
        except PublishError:
            return None
    if queue not in section.queues:
        return None
    conninfo = section.conninfo
    try:
        conn = psycopg.connect(
            conninfo, autocommit=True, connect_timeout=10, **connection_options(conninfo)
        )
    except psycopg.OperationalError as exc:  # not twice the wait for the connection
        return str(broker_unavailable(conninfo, exc, "connect to")), EXIT_UNREACHABLE
    except psycopg.Error:
        return None
    try:
        with conn:
            queue_admin.check_tables(conn, section.schema, settings.file)
    except queue_admin.TablesMissing as exc:
        return str(exc), EXIT_USAGE
    except psycopg.Error:
        return None
    return None


def _no_default_queue(settings: Settings, task: str) -> str | None:
    """Why a task without ``--queue`` cannot be sent, in the command line's terms, if it cannot.

    The SDK's own refusal names its options (``queue=...``, ``@task(queue=...)``); the task
    is not imported here, so it has no queue of its own.
    """
    try:
        broker = default_broker(settings)
    except PublishError:
        return None  # the submission says why
    if broker.default_queue is not None:
        return None
    listed = ", ".join(configured_queues(settings)) or "none"
    return (
        f"cannot submit {task}: no channel to send it on: pass --queue Q"
        f"{no_default_queue(broker.name, settings.source)}; the queues of {settings.source}: "
        f"{listed}"
    )


def _fail(message: str, status: int) -> int:
    print(f"dispatcherctl: {escape(message, limit=None)}", file=sys.stderr)
    return status
