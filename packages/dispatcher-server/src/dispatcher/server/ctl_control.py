"""``dispatcherctl``'s control commands: send one, print the replies, return the exit status.

For ``cancel``, the durable job it names is cancelled too if it still waits in its table
(see :mod:`~dispatcher.server.ctl_durable_cancel`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dispatcher.config import Settings
from dispatcher.control import ControlResult, control_with_reply, entries
from dispatcher.control.result import duplicate_node_id
from dispatcher.publish import BrokerUnavailable, PublishError
from dispatcher.server import ctl_durable_cancel
from dispatcher.server.ctl_columns import shown
from dispatcher.server.ctl_exits import EXIT_ERROR_REPLY, EXIT_MISSING, EXIT_OK, EXIT_USAGE
from dispatcher.server.ctl_parser import FILTERS
from dispatcher.server.ctl_render import add_elapsed, render, task_ages
from dispatcher.server.ctl_reply_notes import (
    DISPATCHERD_NOT_FOUND,
    control_channel,
    control_failure,
    mixed_versions,
    no_service_found,
    shortfall,
    tally,
    uncertain,
)


def _control_data(options: argparse.Namespace) -> dict[str, Any]:
    if options.command in ("running", "cancel"):
        data = {k: getattr(options, k) for k in FILTERS if getattr(options, k) is not None}
        if options.command == "cancel" and getattr(options, "all", False):
            data["all"] = True
        return data
    if options.command == "set_log_level":
        return {"level": options.level if options.level is not None else options.level_option}
    if options.command == "aio_tasks":
        return {} if options.limit is None else {"limit": options.limit}
    if options.command == "run":
        return {"task": options.task, "args": options.args, "kwargs": options.kwargs}
    return {}


def run(settings: Settings, options: argparse.Namespace) -> int:
    """Send the control command of *options*; print the replies; return the exit status."""
    # A waiting durable job is cancelled first: claimed meanwhile, the services' cancel gets it.
    waiting, problem = _cancel_waiting(settings, options)
    if problem is not None:
        print(f"dispatcherctl: {shown(problem)}", file=sys.stderr)
    waiting_to = sys.stderr if options.json else sys.stdout
    try:
        result = control_with_reply(
            options.command,
            _control_data(options),
            expected_replies=options.expected_replies,
            timeout=options.timeout,
        )
    except PublishError as exc:
        if waiting is not None:
            print(shown(waiting), file=waiting_to)
        print(f"dispatcherctl: {control_failure(settings, exc)}", file=sys.stderr)
        return EXIT_MISSING if isinstance(exc, BrokerUnavailable) else EXIT_USAGE
    hint = _waiting_of_task_hint(settings, options)  # after the cancel: it waits for nothing
    if hint is not None:
        print(f"dispatcherctl: {shown(hint)}", file=sys.stderr)
    channel = control_channel(settings)
    if waiting is not None and result.expected == 0 and options.expected_replies is None:
        # No service, but the job it meant is cancelled (with --json, [] is printed: no reply).
        print(shown(waiting), file=waiting_to)
        return EXIT_OK
    if result.expected == 0 and options.expected_replies is None and not result.replies:
        print(f"dispatcherctl: {no_service_found(channel, result)}", file=sys.stderr)
        return EXIT_MISSING
    looked_up = options.expected_replies is None and bool(
        result.expected_nodes or result.uncertain_nodes
    )
    if options.json:
        print(json.dumps(result.replies, indent=2, sort_keys=True, default=str))
    else:
        shown_result = (
            _with_elapsed(result, options.timeout) if result.command == "running" else result
        )
        print(render(shown_result), end="")
        print(tally(result, looked_up, channel))
        versions = mixed_versions(result)
        if versions is not None:
            print(f"dispatcherctl: {versions}", file=sys.stderr)
    if waiting is not None:
        print(shown(waiting), file=waiting_to)
    for note in result.skipped:
        print(f"dispatcherctl: {shown(note)}", file=sys.stderr)
    if result.unconfirmed:
        where = f"on channel {shown(channel)}" if channel else "on the channel"
        print(f"dispatcherctl: {uncertain(result.unconfirmed, where)}", file=sys.stderr)
    for node in result.unexpected:
        print(
            f"dispatcherctl: {shown(node)} answered without being among the dispatcher "
            f"services found in the database (a dispatcherd service?); {DISPATCHERD_NOT_FOUND}",
            file=sys.stderr,
        )
    for node in result.duplicates:
        print(f"dispatcherctl: {shown(duplicate_node_id(node))}", file=sys.stderr)
    if not result.complete:
        print(f"dispatcherctl: {shortfall(result)}", file=sys.stderr)
        return EXIT_MISSING
    failed = [reply for reply in result.replies if "error" in reply]
    if failed:
        nodes = ", ".join(shown(reply.get("node_id", "?")) for reply in failed)
        print(f"dispatcherctl: error reply from {nodes}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    return EXIT_OK


def _cancel_waiting(
    settings: Settings, options: argparse.Namespace
) -> tuple[str | None, str | None]:
    """For ``cancel --uuid U``: cancel the durable job U too if it waits in the table.

    See :func:`ctl_durable_cancel.cancel_waiting_job`. Not with ``--args`` or ``--kwargs``, which
    compare as Python does (the table holds JSON text): then a hint names ``cancel-job``.
    """
    if options.command != "cancel" or not options.uuid:
        return None, None
    if options.args is not None or options.kwargs is not None:
        if not ctl_durable_cancel.waits(settings, options.uuid, options.timeout):
            return None, None
        return None, (
            f"job {options.uuid} waits in its durable queue, where --args and --kwargs are not "
            f"compared: cancel it with 'dispatcherctl cancel-job --uuid {options.uuid}'"
        )
    return ctl_durable_cancel.cancel_waiting_job(
        settings, options.uuid, options.task, options.timeout
    )


def _waiting_of_task_hint(settings: Settings, options: argparse.Namespace) -> str | None:
    """For ``cancel --task T`` (no ``--uuid``): name ``cancel-job`` when jobs of T wait.

    Waiting durable jobs (delayed, or waiting for a retry) are no service's yet, so the
    services' cancel does not reach them; they are counted, not cancelled, here.
    """
    if options.command != "cancel" or not options.task or options.uuid:
        return None
    count = ctl_durable_cancel.waiting_of_task(settings, options.task, options.timeout)
    if count == 0:
        return None
    jobs = "job of this task waits" if count == 1 else "jobs of this task wait"
    filtered = options.args is not None or options.kwargs is not None
    return (
        f"{count} {jobs} in durable queues (delayed, or waiting for a retry), where no service "
        f"holds {'it' if count == 1 else 'them'} to cancel: 'dispatcherctl cancel-job --task "
        f"{options.task}' cancels every waiting job of the task"
        + (", whatever its args and kwargs" if filtered else "")
    )


def _with_elapsed(result: ControlResult, timeout: float) -> ControlResult:
    """*result* (of ``running``), each task with how long it has run or waited.

    How long a task on a worker has run is in the ``workers`` reply (asked here, when a
    task runs on a worker); without it, the time since it was submitted is shown.
    """
    ages: dict[str, dict[str, tuple[str, float]]] = {}
    if any(key.startswith("worker-") for reply in result.replies for key in entries(reply)):
        try:
            workers = control_with_reply(
                "workers", expected_replies=len(result.replies), timeout=timeout
            )
        except PublishError:
            workers = ControlResult("workers")
        ages = {str(reply.get("node_id")): task_ages(entries(reply)) for reply in workers}
    replies = [
        reply if "error" in reply else add_elapsed(reply, ages.get(str(reply.get("node_id")), {}))
        for reply in result.replies
    ]
    return ControlResult(result.command, replies=replies, expected=result.expected)
