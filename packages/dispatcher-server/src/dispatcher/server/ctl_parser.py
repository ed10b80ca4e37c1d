"""``dispatcherctl``'s command line: its parser, and the options it parses, checked.

The values each option takes are checked by :mod:`~dispatcher.server.ctl_arguments`; the
commands' own options come from the modules that run them (``submit``, ``top``, the commands
on durable jobs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Final

from dispatcher.config.loading import CONFIG_FILE_HELP
from dispatcher.schema import LOG_LEVELS
from dispatcher.server import ctl_jobs_parser, ctl_submit
from dispatcher.server.ctl_arguments import (
    Text,
    count,
    json_list,
    json_object,
    log_level,
    own_log_level,
    positive_seconds,
)
from dispatcher.server.ctl_exits import EXIT_STATUSES
from dispatcher.server.release import installed_version

TOP_HELP: Final = "a live view of every service: workers, running tasks, queues, rates, failures"

DEFAULT_TIMEOUT: Final = 2.0
"""Seconds to wait for replies, without ``--timeout``."""

MIGRATE_LOCK_WAIT: Final = 5.0
"""Seconds ``migrate`` waits for the locks it needs, without ``--timeout``: while it waits,
publishers and services queue behind it, so not long."""

REPLIES_JSON_HELP: Final = "print the replies as JSON"
REPLIES_TIMEOUT_HELP: Final = (
    f"seconds to wait for replies, once connected (default: {DEFAULT_TIMEOUT:g})"
)
EXPECTED_REPLIES_HELP: Final = (
    "replies to wait for (default: one per service listening on the channel)"
)


class _Refused(argparse.Action):
    """An option of the others that this command does not take: refused, saying why.

    Not listed in the command's help. Refused rather than left unknown, so that the error
    says why (``argument --json: migrate has no --json output``); given before the
    command, the same reason is given (see :func:`_check_options_before`).
    """

    def __init__(
        self, option_strings: Sequence[str], dest: str, reason: str, **kwargs: Any
    ) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.reason = reason

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        """Refuse the option."""
        raise argparse.ArgumentError(self, self.reason)


def _global_options(
    parser: argparse.ArgumentParser,
    *,
    command: str | None = None,
    json: str | None = REPLIES_JSON_HELP,
    timeout: str | None = REPLIES_TIMEOUT_HELP,
    expected_replies: bool = True,
) -> None:
    """The options accepted before or after the command.

    On the parser of a *command*, the help of the ones it takes (``None``: it does not take
    it); the others are refused there, unlisted. On the main parser (no *command*), they are
    all listed, with their defaults.
    """
    on_command = command is not None
    default: Any = argparse.SUPPRESS if on_command else None
    parser.add_argument("--config", metavar="FILE", default=default, help=CONFIG_FILE_HELP)
    parser.add_argument(
        "--log-level",
        type=own_log_level,
        choices=LOG_LEVELS,  # dispatcherd's dispatcherctl takes the same
        metavar="LEVEL",
        default=argparse.SUPPRESS if on_command else "WARNING",
        help="what dispatcherctl itself logs on stderr (default: WARNING)",
    )
    if json is not None:
        parser.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS if on_command else False,
            help=json,
        )
    else:
        _refuse(parser, "--json", 0, f"{command} has no --json output")
    if timeout is not None:
        parser.add_argument(
            "--timeout",
            type=positive_seconds,
            metavar="S",
            default=default,  # the command's own default, once known not to be given
            help=timeout,
        )
    elif command != "submit":  # whose --timeout is the task's
        _refuse(parser, "--timeout", None, f"{command} waits for no reply and no lock")
    if expected_replies:
        parser.add_argument(
            "--expected-replies",
            type=count,
            metavar="N",
            default=default,
            help=EXPECTED_REPLIES_HELP,
        )
    else:
        reason = f"{command} asks no service, so waits for none"
        _refuse(parser, "--expected-replies", None, reason)


def _refuse(parser: argparse.ArgumentParser, option: str, nargs: int | None, reason: str) -> None:
    parser.add_argument(option, action=_Refused, nargs=nargs, reason=reason, help=argparse.SUPPRESS)


def parser() -> argparse.ArgumentParser:
    """The command line of ``dispatcherctl``."""
    main = argparse.ArgumentParser(
        prog="dispatcherctl",
        description="Ask running dispatcher services what they do, and tell them what to do;\n"
        "submit tasks; manage the durable queues. The options below may come before or\n"
        "after the command; COMMAND --help lists those it takes.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _global_options(
        main,
        json="print JSON: the replies, or what the command did",
        timeout=f"seconds to wait for replies, once connected (default: {DEFAULT_TIMEOUT:g}); "
        "for the commands on durable queues, for a lock",
    )
    commands = main.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, **options: Any) -> argparse.ArgumentParser:
        """Add the command *name*; *options*: what it takes of the global options."""
        sub = commands.add_parser(name, help=help, description=help)
        _global_options(sub, command=name, **options)
        return sub

    command("alive", "ask every service to answer")
    for name, help in (
        ("running", "list running, queued, blocked and delayed tasks"),
        ("cancel", "cancel tasks (needs a filter, or --all)"),
    ):
        sub = command(name, help)
        sub.add_argument("--uuid", action=Text, help="only the task with this uuid")
        sub.add_argument("--task", action=Text, help="only tasks with this name")
        sub.add_argument(
            "--args", type=json_list, metavar="JSON", help="only tasks with these args"
        )
        sub.add_argument(
            "--kwargs", type=json_object, metavar="JSON", help="only tasks with these kwargs"
        )
        if name == "cancel":
            sub.add_argument("--all", action="store_true", help="cancel every task")
    command("workers", "list the worker processes")
    command("status", "everything at a glance: what the other commands show, and counters")
    command("main", "counters of the main process and the pool")
    tasks = command("aio_tasks", "the asyncio tasks of the services' main processes")
    tasks.add_argument("--limit", type=count, metavar="N", help="stack depth (default: 6)")
    command("producers", "brokers, scheduled and on-start tasks")
    command("chunks", "incomplete chunked messages")
    command("metrics", "where the Prometheus endpoint is")
    level = command("set_log_level", "change the services' log level")
    level.add_argument(
        "level", nargs="?", type=log_level, help=f"{', '.join(LOG_LEVELS)}, or a number"
    )
    level.add_argument(
        "--level",
        dest="level_option",
        type=log_level,
        metavar="LEVEL",
        help="the level, as an option (as dispatcherd's dispatcherctl takes it)",
    )
    run = command("run", "start a task (needs producers.control in the services' config)")
    run.add_argument("task", action=Text, help="the task's name")
    run.add_argument(
        "--args", type=json_list, default=[], metavar="JSON", help="positional arguments"
    )
    run.add_argument(
        "--kwargs", type=json_object, default={}, metavar="JSON", help="keyword arguments"
    )
    submit = commands.add_parser(
        "submit",
        help="publish a task, as the SDK's submit_task does",
        description="Publish a task, as the SDK's submit_task does (over pg_notify, or "
        "stored as a job for a durable queue).",
    )
    _global_options(
        submit,
        command="submit",
        json="print the outcome as JSON",
        timeout=None,  # its --timeout is the task's, from ctl_submit
        expected_replies=False,
    )
    ctl_submit.add_arguments(submit)
    # Its options come from ctl_top, imported only when it runs (see _top_parser).
    commands.add_parser("top", help=TOP_HELP, description=TOP_HELP, add_help=False)
    install = command(
        "install-sql",
        "install dispatcher_submit() and dispatcher_enqueue() in the database (SQL publishers)",
        json=None,
        timeout=None,
        expected_replies=False,
    )
    install.add_argument("--print", action="store_true", help="print the SQL instead")
    migrate = command(
        "migrate",
        "create or upgrade the tables of the durable pg_queue broker",
        json=None,
        timeout="seconds to wait for a lock another session holds on the tables "
        f"(default: {MIGRATE_LOCK_WAIT:g}; another migrate is waited for)",
        expected_replies=False,
    )
    migrate.add_argument("--print", action="store_true", help="print the SQL it would run")
    ctl_jobs_parser.add_commands(command, DEFAULT_TIMEOUT)
    return main


def version() -> str:
    """The version of dispatcher installed (of the ``dispatcher-server`` distribution)."""
    return installed_version()


FILTERS: Final = ("uuid", "task", "args", "kwargs")
"""The options of ``running`` and ``cancel`` that choose tasks."""


def parse_command_line(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of the command line *argv* (default: ``sys.argv``), checked.

    Options given before the command are those given after it; ``--timeout`` not given is
    the command's default. A usage error exits 2 with its reason, as argparse does.
    """
    arguments = parser()
    options, extra = arguments.parse_known_args(argv)
    if options.command == "submit" and options.timeout is not None:
        arguments.error(
            "--timeout before submit is the wait for replies, and submit waits for none; "
            "a task's own timeout goes after it: submit TASK --timeout S"
        )
    _check_options_before(arguments, options)
    if options.timeout is None:
        options.timeout = MIGRATE_LOCK_WAIT if options.command == "migrate" else DEFAULT_TIMEOUT
    if options.command == "top":
        _top_parser().parse_args(extra, namespace=options)
        return options
    if extra:
        arguments.error(f"unrecognized arguments: {' '.join(extra)}")
    if options.command == "cancel" and not (
        options.all or any(getattr(options, key) for key in FILTERS)
    ):
        arguments.error("cancel needs --uuid, --task, --args, --kwargs or --all")
    if options.command == "set_log_level" and (options.level is None) == (
        options.level_option is None
    ):
        arguments.error("set_log_level needs a level (LEVEL or --level LEVEL, not both)")
    return options


def _check_options_before(arguments: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """Refuse an option given before the command that the command does not take."""
    [commands] = [a for a in arguments._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands.choices[options.command]._actions:
        given = getattr(options, action.dest, None)
        if isinstance(action, _Refused) and given is not None and given is not False:
            arguments.error(f"{action.option_strings[0]}: {action.reason}")


def _top_parser() -> argparse.ArgumentParser:
    """The options of ``top``: the global ones and ``ctl_top``'s."""
    from dispatcher.server import ctl_top  # imported only when it runs (its terminal modules)

    top = argparse.ArgumentParser(prog="dispatcherctl top", description=TOP_HELP)
    _global_options(top, command="top")  # given before the command, they are in options
    ctl_top.add_arguments(top)
    return top
