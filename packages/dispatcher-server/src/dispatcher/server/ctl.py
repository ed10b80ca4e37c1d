"""``dispatcherctl``: send control commands to running services and show their replies."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Final

import psycopg

from dispatcher.config import ConfigError, NotConfiguredError, Settings, setup
from dispatcher.config.loading import CONFIG_FILE_HELP
from dispatcher.control import ControlResult, control_with_reply, entries
from dispatcher.control.result import duplicate_node_id
from dispatcher.publish import (
    BrokerUnavailable,
    PublishError,
    broker_unavailable,
    describe_server,
)
from dispatcher.publish.connections import connection_options, note_server, refused_for_good
from dispatcher.schema import LOG_LEVELS, sql_publisher, sql_queue_publisher
from dispatcher.server import ctl_jobs, ctl_submit
from dispatcher.server.ctl_arguments import Text, count, json_list, json_object, positive_seconds
from dispatcher.server.ctl_migrate import migrate_command
from dispatcher.server.ctl_render import (
    DISPATCHERD_NOT_FOUND,
    add_elapsed,
    control_channel,
    control_failure,
    mixed_versions,
    no_service_found,
    render,
    shortfall,
    shown,
    tally,
    task_ages,
    uncertain,
)
from dispatcher.server.log_records import EscapingFormatter
from dispatcher.server.release import installed_version

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_ERROR_REPLY = 0, 1, 2, 3
"""Exit statuses of control commands: every expected service answered, without an error;
some did not answer (or none was found, or the database or socket could not be reached);
usage or config error (or the command could not be sent, or the durable queue's tables are
missing); a service answered with an error."""

EXIT_INTERRUPTED: Final = 130
"""Any command interrupted by Ctrl-C (as shells report SIGINT)."""

EXIT_BROKEN_PIPE: Final = 141
"""Any command whose reader went away before it was done (``| head``), as shells report
SIGPIPE."""

EXIT_STATUSES: Final = """exit status:
  0    every expected service answered, without an error
  1    a service did not answer, none is listening, or the database cannot be reached
  2    usage or config error (or the durable queue's tables not created yet)
  3    a service answered with an error
  130  interrupted (Ctrl-C)"""
"""The exit statuses, as ``dispatcherctl --help`` lists them."""

TOP_HELP: Final = "a live view of every service: workers, running tasks, queues, rates, failures"

NOT_CONFIGURED: Final = (
    "no config found: pass --config FILE, set DISPATCHER_CONFIG_FILE (or "
    "DISPATCHERD_CONFIG_FILE), or create ./dispatcher.yml"
)


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
        type=_own_log_level,
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
        "level", nargs="?", type=_log_level, help=f"{', '.join(LOG_LEVELS)}, or a number"
    )
    level.add_argument(
        "--level",
        dest="level_option",
        type=_log_level,
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
    # Its options come from ctl_top, imported only when it runs (see _top).
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
    ctl_jobs.add_commands(command, DEFAULT_TIMEOUT)
    return main


def version() -> str:
    """The version of dispatcher installed (of the ``dispatcher-server`` distribution)."""
    return installed_version()


def _own_log_level(text: str) -> str:
    """A level name for ``--log-level``, upper-cased when it is one (else shown as given)."""
    return text.upper() if text.upper() in LOG_LEVELS else text


def _log_level(text: str) -> str | int:
    if text.strip().isdigit():
        return int(text)
    name = text.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (expected a whole number, 0 or more, or one of "
            f"{', '.join(LOG_LEVELS)})"
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
    """Run dispatcherctl; return its exit status (:data:`EXIT_INTERRUPTED` on Ctrl-C)."""
    root = logging.root
    level = root.level
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        root.removeHandler(_HANDLER)
        root.setLevel(level)


def _main(argv: Sequence[str] | None) -> int:
    options = parse_command_line(argv)
    _log_to_stderr(options.log_level)
    if options.command == "top":
        return _top(options)
    with _output_in_one_write(_empty_json(options.command) if options.json else None):
        return _run(options)


OBJECT_OUTPUTS: Final = frozenset({"retry", "purge", "cancel-job", "submit", "top"})
"""The commands whose ``--json`` output is one JSON object; the others' is a list (of replies,
or of jobs)."""


def _empty_json(command: str) -> str:
    """What ``--json`` prints for *command* when it printed nothing: its output's shape, empty.

    It failed (the reason is on stderr), or no service answered.
    """
    return "{}\n" if command in OBJECT_OUTPUTS else "[]\n"


@contextlib.contextmanager
def _output_in_one_write(empty: str | None = None) -> Iterator[None]:
    """Gather what the block prints, then write it at once.

    So that a reader that stops early (``dispatcherctl status | head -1``) has the whole
    output in its pipe before it goes: the command keeps its own exit status. If the block
    printed nothing, *empty* (if given) is written instead: with ``--json``, stdout always
    holds JSON, whatever the outcome.
    """
    shown = sys.stdout
    gathered = io.StringIO()
    sys.stdout = gathered
    try:
        yield
    finally:
        sys.stdout = shown
        text = gathered.getvalue() or empty
        if text:
            shown.write(text)
            shown.flush()


def _run(options: argparse.Namespace) -> int:
    """Run the command of *options* (but ``top``); its exit status."""
    if options.command == "install-sql" and options.print:
        print(sql_publisher(), sql_queue_publisher(), sep="\n", end="")
        return EXIT_OK
    settings = _settings(options.config)
    if settings is None:
        return EXIT_USAGE
    if options.command == "install-sql":
        return install_sql(settings)
    if options.command == "migrate":
        return migrate_command(settings, options.print, options.timeout)
    if options.command == "submit":
        return ctl_submit.run(settings, options)
    if options.command in ctl_jobs.COMMANDS:
        return ctl_jobs.run(options, settings)
    return _control(settings, options)


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


class _StderrHandler(logging.Handler):
    """Writes each record to the ``sys.stderr`` of the moment, escaped.

    ``top``'s live view puts a ``sys.stderr`` of its own in place while it draws; the
    escaping is :class:`~dispatcher.server.log_records.EscapingFormatter`'s.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _reported_otherwise(record: logging.LogRecord) -> bool:
    # The control client logs each reply it skipped; dispatcherctl reports them itself.
    return record.name != "dispatcher.control"


_HANDLER: Final = _StderrHandler()
_HANDLER.addFilter(_reported_otherwise)


def _log_to_stderr(level: str) -> None:
    """Send what dispatcherctl logs (config warnings, ...) to stderr, from *level* up."""
    detailed = logging.getLevelName(level) < logging.WARNING
    fmt = (
        "dispatcherctl: %(levelname)s %(name)s: %(message)s"
        if detailed
        else "dispatcherctl: %(message)s"
    )
    _HANDLER.setFormatter(EscapingFormatter(fmt))
    _HANDLER.setLevel(level)
    root = logging.root
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    root.setLevel(level)


def _settings(config: str | None) -> Settings | None:
    """The config to use, or ``None`` once the reason it cannot be loaded was printed."""
    try:
        return setup(file_path=config)
    except NotConfiguredError:
        print(f"dispatcherctl: {NOT_CONFIGURED}", file=sys.stderr)
    except ConfigError as exc:
        print(f"dispatcherctl: {exc}", file=sys.stderr)
    return None


def _top_parser() -> argparse.ArgumentParser:
    """The options of ``top``: the global ones and ``ctl_top``'s."""
    from dispatcher.server import ctl_top  # imported only when it runs (its terminal modules)

    top = argparse.ArgumentParser(prog="dispatcherctl top", description=TOP_HELP)
    _global_options(top, command="top")  # given before the command, they are in options
    ctl_top.add_arguments(top)
    return top


def _top(options: argparse.Namespace) -> int:
    """``dispatcherctl top``: the view is ``ctl_top``'s."""
    from dispatcher.server import ctl_top

    settings = _settings(options.config)
    if settings is None:
        if options.json:
            print(_empty_json("top"), end="")  # --json prints JSON, whatever the outcome
        return EXIT_USAGE
    return ctl_top.run(settings, options)


def _control(settings: Settings, options: argparse.Namespace) -> int:
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

    See :func:`ctl_jobs.cancel_waiting_job`. Not with ``--args`` or ``--kwargs``, which
    compare as Python does (the table holds JSON text): then a hint names ``cancel-job``.
    """
    if options.command != "cancel" or not options.uuid:
        return None, None
    if options.args is not None or options.kwargs is not None:
        if not ctl_jobs.waits(settings, options.uuid, options.timeout):
            return None, None
        return None, (
            f"job {options.uuid} waits in its durable queue, where --args and --kwargs are not "
            f"compared: cancel it with 'dispatcherctl cancel-job --uuid {options.uuid}'"
        )
    return ctl_jobs.cancel_waiting_job(settings, options.uuid, options.task, options.timeout)


def _waiting_of_task_hint(settings: Settings, options: argparse.Namespace) -> str | None:
    """For ``cancel --task T`` (no ``--uuid``): name ``cancel-job`` when jobs of T wait.

    Waiting durable jobs (delayed, or waiting for a retry) are no service's yet, so the
    services' cancel does not reach them; they are counted, not cancelled, here.
    """
    if options.command != "cancel" or not options.task or options.uuid:
        return None
    count = ctl_jobs.waiting_of_task(settings, options.task, options.timeout)
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


def install_sql(settings: Settings) -> int:
    """Create (or replace) ``dispatcher_submit()`` and ``dispatcher_enqueue()``.

    ``dispatcher_submit()`` in the database of ``brokers.pg_notify``, ``dispatcher_enqueue()``
    in that of ``brokers.pg_queue`` (else of ``brokers.pg_notify``). Each file is one
    transaction, which refuses a schema where ``PUBLIC`` may create (a refusal: exit 2).
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
            with psycopg.connect(conninfo, autocommit=True, **connection_options(conninfo)) as conn:
                try:
                    conn.execute(text.encode())
                except psycopg.Error as exc:
                    note_server(exc, conn, conninfo)  # (a standby, or a read-only role: which)
                    raise
                # Where the file created it: the first schema of the session's search_path.
                row = conn.execute(b"SELECT pg_catalog.current_schema()").fetchone()
        except psycopg.Error as exc:
            failure = broker_unavailable(conninfo, exc, f"install {function} in")
            print(f"dispatcherctl: {shown(failure)}", file=sys.stderr)
            return EXIT_USAGE if refused_for_good(exc) else EXIT_MISSING
        schema = f'"{shown(row[0])}"' if row is not None and row[0] is not None else "?"
        print(f"installed {function} in schema {schema} of {describe_server(conninfo)}")
    return EXIT_OK


def entry_point() -> None:
    """Console-script entry point."""
    for stream in (sys.stdout, sys.stderr):
        # A character the terminal's encoding lacks (a reply may hold any) is shown escaped.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can be shown; keep the interpreter's last flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_BROKEN_PIPE
    sys.exit(status)


if __name__ == "__main__":
    entry_point()
