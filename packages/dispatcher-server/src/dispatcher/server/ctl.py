"""``dispatcherctl``: send control commands to running services and show their replies."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any, Final

import psycopg

from dispatcher.config import ConfigError, NotConfiguredError, Settings, setup
from dispatcher.control import ControlResult, control_with_reply, entries
from dispatcher.publish import PublishError, broker_unavailable, describe_server
from dispatcher.publish.routing import control_broker
from dispatcher.schema import LOG_LEVELS, sql_publisher, sql_queue_publisher
from dispatcher.server import ctl_jobs, ctl_submit
from dispatcher.server.ctl_migrate import migrate_command
from dispatcher.server.ctl_render import (
    DISPATCHERD_NOT_FOUND,
    add_elapsed,
    render,
    shown,
    tally,
    task_ages,
)
from dispatcher.server.ctl_submit import json_list, json_object

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_ERROR_REPLY = 0, 1, 2, 3
"""Exit statuses of control commands: every expected service answered, without an error;
some did not answer (or none was found); usage or config error (or the command could not
be sent); a service answered with an error."""

TOP_HELP: Final = "a live view of every service: workers, running tasks, queues, rates, failures"

NOT_CONFIGURED: Final = (
    "no config found: pass --config FILE, set DISPATCHER_CONFIG_FILE (or "
    "DISPATCHERD_CONFIG_FILE), or create ./dispatcher.yml"
)


def _global_options(
    parser: argparse.ArgumentParser, *, suppress: bool, control: bool = True
) -> None:
    """The options accepted before or after the command (*control*: those of commands)."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", metavar="FILE", default=default, help="config file")
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the replies as JSON" if control else "print the outcome as JSON",
    )
    if not control:
        return
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=argparse.SUPPRESS if suppress else 2.0,
        help="seconds to wait for replies (default: 2)",
    )
    parser.add_argument(
        "--expected-replies",
        type=int,
        metavar="N",
        default=default,
        help="replies to wait for (default: one per service listening on the channel)",
    )


def parser() -> argparse.ArgumentParser:
    """The command line of ``dispatcherctl``."""
    main = argparse.ArgumentParser(
        prog="dispatcherctl", description="Send a control command to dispatcher services."
    )
    main.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _global_options(main, suppress=False)
    commands = main.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _global_options(sub, suppress=True)
        return sub

    command("alive", "ask every service to answer")
    for name, help in (
        ("running", "list running, queued, blocked and delayed tasks"),
        ("cancel", "cancel tasks (needs a filter, or --all)"),
    ):
        sub = command(name, help)
        sub.add_argument("--uuid", help="only the task with this uuid")
        sub.add_argument("--task", help="only tasks with this name")
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
    tasks.add_argument("--limit", type=int, metavar="N", help="stack depth (default: 6)")
    command("producers", "brokers, scheduled and on-start tasks")
    command("chunks", "incomplete chunked messages")
    command("metrics", "where the Prometheus endpoint is")
    level = command("set_log_level", "change the services' log level")
    level.add_argument(
        "level", nargs="?", type=_log_level, help=f"{', '.join(LOG_LEVELS)}, or a number"
    )
    level.add_argument("--level", dest="level_option", type=_log_level, help=argparse.SUPPRESS)
    run = command("run", "start a task (needs producers.control in the services' config)")
    run.add_argument("task", help="the task's name")
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
    _global_options(submit, suppress=True, control=False)
    ctl_submit.add_arguments(submit)
    # Its options come from ctl_top, imported only when it runs (see _top).
    commands.add_parser("top", help=TOP_HELP, description=TOP_HELP, add_help=False)
    install = command(
        "install-sql",
        "install dispatcher_submit() and dispatcher_enqueue() in the database (SQL publishers)",
    )
    install.add_argument("--print", action="store_true", help="print the SQL instead")
    migrate = command("migrate", "create or upgrade the tables of the durable pg_queue broker")
    migrate.add_argument("--print", action="store_true", help="print the SQL it would run")
    ctl_jobs.add_commands(command)
    return main


def version() -> str:
    """The version of dispatcher installed (of the ``dispatcher-server`` distribution)."""
    try:
        return metadata.version("dispatcher-server")
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _log_level(text: str) -> str | int:
    if text.strip().isdigit():
        return int(text)
    name = text.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (expected a number or one of {', '.join(LOG_LEVELS)})"
        )
    return name


FILTERS = ("uuid", "task", "args", "kwargs")


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run dispatcherctl; return its exit status."""
    arguments = parser()
    options, extra = arguments.parse_known_args(argv)
    if options.command == "top":
        return _top(options, extra)
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
    if options.command == "install-sql" and options.print:
        print(sql_publisher(), sql_queue_publisher(), sep="\n", end="")
        return EXIT_OK
    settings = _settings(options.config)
    if settings is None:
        return EXIT_USAGE
    if options.command == "install-sql":
        return install_sql(settings)
    if options.command == "migrate":
        return migrate_command(settings, options.print)
    if options.command == "submit":
        return ctl_submit.run(settings, options)
    if options.command in ctl_jobs.COMMANDS:
        return ctl_jobs.run(options, settings)
    return _control(settings, options)


def _settings(config: str | None) -> Settings | None:
    """The config to use, or ``None`` once the reason it cannot be loaded was printed."""
    try:
        return setup(file_path=config)
    except NotConfiguredError:
        print(f"dispatcherctl: {NOT_CONFIGURED}", file=sys.stderr)
    except ConfigError as exc:
        print(f"dispatcherctl: {exc}", file=sys.stderr)
    return None


def _top(options: argparse.Namespace, extra: list[str]) -> int:
    """``dispatcherctl top``: the options and the view are ``ctl_top``'s."""
    from dispatcher.server import ctl_top  # its terminal library is optional

    top = argparse.ArgumentParser(prog="dispatcherctl top", description=TOP_HELP)
    _global_options(top, suppress=True)  # given before the command, they are in options
    ctl_top.add_arguments(top)
    top.parse_args(extra, namespace=options)
    settings = _settings(options.config)
    if settings is None:
        return EXIT_USAGE
    return ctl_top.run(settings, options)


def _control(settings: Settings, options: argparse.Namespace) -> int:
    """Send the control command of *options*; print the replies; return the exit status."""
    try:
        result = control_with_reply(
            options.command,
            _control_data(options),
            expected_replies=options.expected_replies,
            timeout=options.timeout,
        )
    except PublishError as exc:
        print(f"dispatcherctl: {shown(exc)}", file=sys.stderr)
        return EXIT_USAGE
    channel = _control_channel(settings)
    if result.expected == 0 and options.expected_replies is None:
        listening = f" listening on channel {shown(channel)}" if channel else ""
        print(
            f"dispatcherctl: no dispatcher service{listening} is connected to the database "
            f"({DISPATCHERD_NOT_FOUND})",
            file=sys.stderr,
        )
        return EXIT_MISSING
    looked_up = options.expected_replies is None and bool(result.expected_nodes)
    if options.json:
        print(json.dumps(result.replies, indent=2, sort_keys=True, default=str))
    else:
        shown_result = (
            _with_elapsed(result, options.timeout) if result.command == "running" else result
        )
        print(render(shown_result), end="")
        print(tally(result, looked_up, channel))
    for note in result.skipped:
        print(f"dispatcherctl: {shown(note)}", file=sys.stderr)
    for node in result.unexpected:
        print(
            f"dispatcherctl: {shown(node)} answered without being among the dispatcher "
            f"services found in the database (a dispatcherd service?); {DISPATCHERD_NOT_FOUND}",
            file=sys.stderr,
        )
    if not result.complete:
        missing = f"; no answer from {shown(', '.join(result.missing))}" if result.missing else ""
        print(
            f"dispatcherctl: {len(result.replies)} of {result.expected} expected replies{missing}",
            file=sys.stderr,
        )
        return EXIT_MISSING
    failed = [reply for reply in result.replies if "error" in reply]
    if failed:
        nodes = ", ".join(shown(reply.get("node_id", "?")) for reply in failed)
        print(f"dispatcherctl: error reply from {nodes}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    return EXIT_OK


def _control_channel(settings: Settings) -> str | None:
    """The channel control commands go on, when they go through pg_notify."""
    try:
        broker = control_broker(settings)
    except PublishError:
        return None
    return broker.default_queue if broker.name == "pg_notify" else None


def _with_elapsed(result: ControlResult, timeout: float) -> ControlResult:
    """*result* (of ``running``), each task with how long it has run or waited.

    How long a task on a worker has run is in the ``workers`` reply (asked here, when a
    task runs on a worker); without it, the time since it was submitted is shown.
    """
    ages: dict[str, dict[str, float]] = {}
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


def install_sql(settings: Settings) -> int:
    """Create (or replace) ``dispatcher_submit()`` and ``dispatcher_enqueue()``.

    ``dispatcher_submit()`` in the database of ``brokers.pg_notify``, ``dispatcher_enqueue()``
    in that of ``brokers.pg_queue`` (else of ``brokers.pg_notify``).
    """
    pg_notify, pg_queue = settings.brokers.pg_notify, settings.brokers.pg_queue
    installs: list[tuple[str, str, str]] = []
    if pg_notify is not None:
        installs.append(("dispatcher_submit()", pg_notify.conninfo, sql_publisher()))
    queue_database = pg_queue or pg_notify
    if queue_database is None:
        print(
            f"dispatcherctl: {settings.source} has no brokers.pg_notify nor brokers.pg_queue",
            file=sys.stderr,
        )
        return EXIT_USAGE
    installs.append(("dispatcher_enqueue()", queue_database.conninfo, sql_queue_publisher()))
    for function, conninfo, text in installs:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(text.encode())
        except psycopg.Error as exc:
            failure = broker_unavailable(conninfo, exc, f"install {function} in")
            print(f"dispatcherctl: {failure}", file=sys.stderr)
            return EXIT_MISSING
        print(f"installed {function} in {describe_server(conninfo)}")
    return EXIT_OK


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
