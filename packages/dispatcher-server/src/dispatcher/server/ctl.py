"""``dispatcherctl``: send control commands to running services and show their replies."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from dispatcher.config import ConfigError, Settings, setup
from dispatcher.control import control_with_reply
from dispatcher.publish import PublishError, broker_unavailable, describe_server
from dispatcher.schema import LOG_LEVELS, sql_publisher, sql_queue_publisher
from dispatcher.server import ctl_jobs
from dispatcher.server.ctl_migrate import migrate_command
from dispatcher.server.ctl_render import DISPATCHERD_NOT_FOUND, render, shown, tally

EXIT_OK, EXIT_MISSING, EXIT_USAGE = 0, 1, 2


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options accepted before or after the command."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", metavar="FILE", default=default, help="config file")
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
        help="replies to wait for (default: every service connected to the database)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the replies as JSON",
    )


def parser() -> argparse.ArgumentParser:
    """The command line of ``dispatcherctl``."""
    main = argparse.ArgumentParser(
        prog="dispatcherctl", description="Send a control command to dispatcher services."
    )
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
            "--args", type=_json_list, metavar="JSON", help="only tasks with these args"
        )
        sub.add_argument(
            "--kwargs", type=_json_object, metavar="JSON", help="only tasks with these kwargs"
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
    run.add_argument("--args", type=json.loads, default=[], help="positional arguments, as JSON")
    run.add_argument("--kwargs", type=json.loads, default={}, help="keyword arguments, as JSON")
    install = command(
        "install-sql",
        "install dispatcher_submit() and dispatcher_enqueue() in the database (SQL publishers)",
    )
    install.add_argument("--print", action="store_true", help="print the SQL instead")
    migrate = command("migrate", "create or upgrade the tables of the durable pg_queue broker")
    migrate.add_argument("--print", action="store_true", help="print the SQL it would run")
    ctl_jobs.add_commands(command)
    return main


def _json_list(text: str) -> list[Any]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON array, got {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


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
    options = arguments.parse_args(argv)
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
    try:
        settings = setup(file_path=options.config)
    except ConfigError as exc:
        print(f"dispatcherctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if options.command == "install-sql":
        return install_sql(settings)
    if options.command == "migrate":
        return migrate_command(settings, options.print)
    if options.command in ctl_jobs.COMMANDS:
        return ctl_jobs.run(options, settings)
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
    if result.expected == 0 and options.expected_replies is None:
        print(
            "dispatcherctl: no dispatcher service is connected to the database "
            f"({DISPATCHERD_NOT_FOUND})",
            file=sys.stderr,
        )
        return EXIT_MISSING
    looked_up = options.expected_replies is None and bool(result.expected_nodes)
    if options.json:
        print(json.dumps(result.replies, indent=2, sort_keys=True, default=str))
    else:
        print(render(result), end="")
        print(tally(result, looked_up))
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
    return EXIT_OK


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
