"""The command line of ``dispatcherctl jobs``, ``retry``, ``purge`` and ``cancel-job``.

Their options, added to ``dispatcherctl``'s parser (:mod:`dispatcher.server.ctl_parser`);
:mod:`dispatcher.server.ctl_jobs` runs them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dispatcher.server.ctl_arguments import Text, count_between, seconds_up_to
from dispatcher.server.queue_admin_list import MAX_LIMIT, STATES
from dispatcher.server.queue_admin_purge import FINISHED_STATES, MAX_OLDER_THAN

AddCommand = Callable[..., argparse.ArgumentParser]
"""``dispatcherctl``'s way to add a subcommand: ``add(name, help, **taken) -> parser``, where
*taken* gives the help of the global options it takes (``json``, ``timeout``; ``None``: not
taken) and whether it takes ``expected_replies``."""


def add_commands(add: AddCommand, default_timeout: float) -> None:
    """Add ``jobs``, ``retry``, ``purge`` and ``cancel-job`` to ``dispatcherctl``'s command line.

    *default_timeout* is ``dispatcherctl``'s ``--timeout`` when none is given.
    """
    taken = {
        "json": "print JSON instead of text",
        "timeout": "seconds to wait for a lock another session holds on the jobs table "
        f"(default: {default_timeout:g})",
        "expected_replies": False,  # no service is asked: no replies
    }
    jobs = add("jobs", "list the jobs of the durable queue (brokers.pg_queue)", **taken)
    jobs.add_argument("--state", choices=STATES, help="only jobs in this state")
    jobs.add_argument("--queue", action=Text, help="only jobs of this queue")
    jobs.add_argument("--task", action=Text, help="only jobs of this task")
    jobs.add_argument("--uuid", action=Text, help="only the job with this uuid")
    jobs.add_argument(
        "--limit",
        type=count_between(1, MAX_LIMIT),
        default=50,
        metavar="N",
        help="most jobs shown (50)",
    )
    retry = add(
        "retry",
        "queue failed jobs again, with every attempt available (attempts reset to 0)",
        **taken,
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--uuid", action=Text, help="the failed or cancelled job with this uuid")
    which.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument(
        "--queue", action=Text, help="with --failed: only the failed jobs of this queue"
    )
    purge = add("purge", "delete finished jobs that ended some time ago", **taken)
    purge.add_argument(
        "--state", choices=FINISHED_STATES, required=True, help="the finished jobs to delete"
    )
    purge.add_argument(
        "--older-than",
        type=seconds_up_to(MAX_OLDER_THAN),
        required=True,
        metavar="SECONDS",
        help=f"only jobs that ended at least this long ago (at most {MAX_OLDER_THAN})",
    )
    purge.add_argument(
        "--queue", action=Text, help="only the finished jobs of this queue (default: every queue)"
    )
    cancel = add(
        "cancel-job",
        "cancel durable jobs that wait (queued): they end cancelled and never start",
        **taken,
    )
    job = cancel.add_mutually_exclusive_group(required=True)
    job.add_argument("--uuid", action=Text, help="the waiting job with this uuid")
    job.add_argument("--task", action=Text, help="every waiting job of this task")
    cancel.add_argument(
        "--queue", action=Text, help="with --task: only the waiting jobs of this queue"
    )
