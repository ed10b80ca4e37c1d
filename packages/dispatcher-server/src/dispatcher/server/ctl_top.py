"""``dispatcherctl top``: a live view of every service, refreshed until ``q`` or Ctrl-C.

Each refresh asks every service for ``status`` (and samples the durable queues when the
config has ``brokers.pg_queue``, see :mod:`dispatcher.server.ctl_top_poll`), then redraws
the screen (:mod:`dispatcher.server.ctl_top_render`). The live view needs ``rich``, the
``top`` extra of dispatcher-server.

When standard output is not a terminal, or with ``--once``, one snapshot is printed instead
(``--json``: the replies and the queues' depth as JSON), drawn by rich when it is installed,
else as plain text (:mod:`dispatcher.server.ctl_top_plain`, fitted to the terminal's width
when printed on one); the exit status says whether every service answered, as for the
other commands. The live view exits 0 when ``q`` is pressed (standard input is then read
key by key, and its mode restored on the way out) or on Ctrl-C (only Ctrl-C on Windows).
The event loop is asyncio's selector loop on every platform (on Windows too, where psycopg's
async connections cannot run on the default one): see :func:`run_async`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from dispatcher.config import Settings
from dispatcher.server.ctl_arguments import seconds_between

if TYPE_CHECKING:
    from rich.console import Console

    from dispatcher.server.ctl_top_data import Poll
    from dispatcher.server.ctl_top_poll import Collector

T = TypeVar("T")

EXIT_OK, EXIT_USAGE = 0, 2
EXIT_INTERRUPTED: Final = 130
"""A snapshot interrupted by Ctrl-C (as shells report SIGINT); the live view exits 0."""

MISSING_RICH: Final = (
    "dispatcherctl: top's live view needs the rich library: pip install "
    '"dispatcher-server[top]" (top --once prints a plain snapshot without it)'
)
"""What the live view says, and exits with :data:`EXIT_USAGE`, when rich is not installed."""
QUIT_KEYS: Final = frozenset(b"qQ")
"""Keys that end the live view."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``top``'s options (``--interval``, ``--once``) to its subcommand parser."""
    parser.add_argument(
        "--interval",
        type=seconds_between(0.1, 3600),
        default=1.0,
        metavar="S",
        help="seconds between refreshes (default: 1)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot and exit (what top does when its output is not a terminal)",
    )


def run(settings: Settings, options: argparse.Namespace) -> int:
    """Run ``top`` with the parsed *options*; return the exit status."""
    snapshot = options.once or options.json or not sys.stdout.isatty()
    has_rich = _has_rich()
    if not snapshot and not has_rich:
        print(MISSING_RICH, file=sys.stderr)
        return EXIT_USAGE
    from dispatcher.server.ctl_top_poll import Collector

    collector = Collector(settings, options.expected_replies, options.timeout)
    if snapshot:
        how = "json" if options.json else "rich" if has_rich else "plain"
        try:
            return run_async(_snapshot, collector, how)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    console = _console()
    try:
        with _keys_readable(sys.stdin) as keys:
            run_async(_live, collector, console, options.interval, keys)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def run_async(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``function(*args)`` with anyio on asyncio; its result.

    On Windows on a selector event loop: psycopg's async connections refuse the default
    one there, the ``ProactorEventLoop``.
    """
    options = {"loop_factory": asyncio.SelectorEventLoop} if sys.platform == "win32" else {}
    return anyio.run(function, *args, backend="asyncio", backend_options=options)


def _console() -> Console:
    """A rich console whose reader going away ends the command as any other's (exit 141).

    rich's own answer is to exit with status 1, which says a service did not answer.
    """
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Console()


def _has_rich() -> bool:
    try:
        importlib.import_module("rich")
    except ImportError:
        return False
    return True


async def _snapshot(collector: Collector, how: str) -> int:
    """Print one poll (*how*: ``json``, ``rich`` or ``plain``); return its exit status."""
    try:
        poll = await collector.poll()
    finally:
        await collector.aclose()
    if how == "json":
        print(json.dumps(snapshot_json(poll), indent=2, sort_keys=True, default=str))
        for note in poll.notes:
            print(f"dispatcherctl: {note}", file=sys.stderr)
    elif how == "rich":
        from dispatcher.server.ctl_top_render import screen

        _console().print(screen(poll))
    else:
        from dispatcher.server.ctl_top_plain import plain_screen

        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        print(plain_screen(poll, width), end="")
    return poll.status


def snapshot_json(poll: Poll) -> dict[str, Any]:
    """One poll as ``top --json`` prints it."""
    depths = None if poll.depths is None else {q: asdict(d) for q, d in poll.depths.items()}
    return {"replies": poll.replies, "missing": poll.missing, "pg_queue": depths}


async def _live(collector: Collector, console: Console, interval: float, keys: int | None) -> None:
    """Redraw every *interval* seconds until a quit key comes on file descriptor *keys*."""
    from rich.live import Live

    from dispatcher.server.ctl_top_render import screen

    async def refresh(live: Live) -> None:
        previous: Poll | None = None
        while True:
            deadline = anyio.current_time() + interval
            poll = await collector.poll()
            drawn = screen(poll, previous, interval, keys is not None, fit_height=True)
            live.update(drawn, refresh=True)
            previous = poll
            await anyio.sleep_until(deadline)

    # Log lines would scroll the screen away: the view shows what went wrong as notes.
    logging.disable(logging.WARNING)
    try:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            async with anyio.create_task_group() as group:
                group.start_soon(refresh, live)
                await _quit_key(keys)
                group.cancel_scope.cancel()
    finally:
        await collector.aclose()
        logging.disable(logging.NOTSET)


async def _quit_key(fd: int | None) -> None:
    """Return once a quit key is read from *fd*; never when there is none to read from."""
    while fd is not None:
        await anyio.wait_readable(fd)
        data = os.read(fd, 64)
        if not data:  # end of input: no key will come
            break
        if QUIT_KEYS.intersection(data):
            return
    await anyio.sleep_forever()


@contextlib.contextmanager
def _keys_readable(stream: Any) -> Iterator[int | None]:
    """Standard input read key by key (cbreak mode) while inside, when it is a terminal.

    Yields its file descriptor, or ``None`` when it is not a terminal, or on Windows (then
    only Ctrl-C quits). Its previous mode is restored on the way out, whatever the way.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        fd = -1
    if sys.platform == "win32" or fd < 0 or not os.isatty(fd):
        yield None  # (Windows has no termios: Ctrl-C quits there)
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
