"""Publishing where the runtime cuts in: exceptions raised by signal handlers (Ctrl-C, a
task's cancel, a deadline), signal handlers that publish themselves, forks inside a
``batch()`` block, an event loop that is not asyncio's.

What is checked is what a LISTENing connection receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import pytest

from dispatcher.config import reset, setup
from dispatcher.control import acontrol, acontrol_with_reply
from dispatcher.publish import (
    AsyncioRequired,
    DispatcherCancel,
    DispatcherError,
    Submission,
    abatch,
    aclose_connections,
    asubmit_task,
    batch,
    close_connections,
)
from dispatcher.publish.provider_registry_sync import shared_provider
from support import tasks
from support.postgres import wait_for_notifies
from support.proxy import DatabaseProxy

Conn = psycopg.Connection[Any]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _own_connections_closed() -> Iterator[None]:
    yield
    close_connections()


def arrived(listener: Conn, count: int, timeout: float = 10) -> list[str]:
    """The uuids of the next *count* messages *listener* receives (fewer at the deadline)."""
    return [json.loads(n.payload)["uuid"] for n in wait_for_notifies(listener, count, timeout)]


def nothing_more(listener: Conn) -> bool:
    return wait_for_notifies(listener, 1, timeout=0.5) == []


class InterruptAt:
    """A trace function raising *exception* at the *n*-th point of the SDK's frames (or
    contextlib's) where a signal handler may run and raise.

    CPython runs pending signal handlers as a function begins (before its first line), as a
    call returns (and at a backward jump): the exception appears in the called frame before
    its first line, or in the calling frame before the instruction that follows the call.
    :meth:`arm` adds the points of a frame already running: the caller's, where a ``with``
    statement calls the block's exit (and, for ``async with``, awaits what it returned).
    """

    FILES = ("submit_sync.py", "submit_async.py", "batching.py", "contextlib.py")
    AFTER = frozenset(
        dis.opmap[name]
        for name in ("CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD")
        if name in dis.opmap
    )

    def __init__(self, n: int, exception: BaseException) -> None:
        self.left = n
        self.exception = exception
        self.fired = False
        self.where = ""
        """Where it fired: the function, and whether as it began."""
        self.last: dict[FrameType, int | None] = {}
        self.previous: Any = None

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if not frame.f_code.co_filename.endswith(self.FILES):
            return None
        frame.f_trace_opcodes = True
        if event == "call" and frame not in self.last:  # begins (a coroutine's resuming: not)
            self.last[frame] = None
            self.point(frame, "begins")
        return self.local

    def local(self, frame: FrameType, event: str, arg: object) -> Any:
        if event != "opcode" or self.fired:
            return self.local
        after = self.last.get(frame)
        self.last[frame] = frame.f_code.co_code[frame.f_lasti]
        if after in self.AFTER:
            self.point(frame, "after a call")
        return self.local

    def point(self, frame: FrameType, where: str) -> None:
        if self.fired:
            return
        if self.left == 0:
            self.fired = True
            self.where = f"{frame.f_code.co_name} {where}"
            self.last.clear()
            raise self.exception
        self.left -= 1

    def arm(self, caller: FrameType) -> None:
        """Start tracing: new frames, and *caller*, already running."""
        self.previous = sys.gettrace()
        sys.settrace(self)
        caller.f_trace_opcodes = True
        caller.f_trace = self.local

    def disarm(self, caller: FrameType) -> None:
        caller.f_trace = None
        sys.settrace(self.previous)


@pytest.mark.parametrize("nested", [False, True], ids=["alone", "in_an_outer_block"])
def test_an_interrupt_entering_batch_leaves_no_batch_that_swallows_later_submissions(
    configured: object, listener: Conn, nested: bool
) -> None:
    """A KeyboardInterrupt or a task's cancel landing just after batch() made its batch
    current left that batch open for good: every later .delay() of the thread returned a
    uuid and sent nothing. Tried at each instruction of entering the block."""
    sent: list[str] = []
    interrupted = 0
    with batch() if nested else contextlib.nullcontext():
        for n in range(1000):
            tracer = InterruptAt(n, DispatcherCancel())
            previous = sys.gettrace()
            sys.settrace(tracer)
            try:
                with batch():
                    sys.settrace(previous)
                    sent.append(tasks.add.delay(n, 0).uuid)
            except DispatcherCancel:
                interrupted += 1
            finally:
                sys.settrace(previous)
            sent.append(tasks.add.delay(n, 1).uuid)
            if not tracer.fired:
                break
    assert interrupted >= 3  # (the block was entered at last, interrupted at each point before)
    assert sorted(arrived(listener, len(sent))) == sorted(sent)
    assert nothing_more(listener)


def test_an_interrupt_entering_abatch_leaves_no_batch_that_swallows_later_submissions(
    configured: object, listener: Conn
) -> None:
    sent: list[str] = []
    interrupted = 0

    async def attempts() -> None:
        nonlocal interrupted
        for n in range(1000):
            tracer = InterruptAt(n, DispatcherCancel())
            previous = sys.gettrace()
            sys.settrace(tracer)
            try:
                async with abatch():
                    sys.settrace(previous)
                    sent.append((await tasks.add.adelay(n, 0)).uuid)
            except DispatcherCancel:
                interrupted += 1
            finally:
                sys.settrace(previous)
            sent.append((await tasks.add.adelay(n, 1)).uuid)
            if not tracer.fired:
                break
        await aclose_connections()

    asyncio.run(attempts())
    assert interrupted >= 3
    assert sorted(arrived(listener, len(sent))) == sorted(sent)
    assert nothing_more(listener)


def arrived_through(listener: Conn, last: str, timeout: float = 20) -> list[str]:
    """The uuids *listener* receives up to *last*, included (the NOTIFYs of one connection
    arrive in the order they were sent); fewer, without *last*, at the deadline."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while last not in got and time.monotonic() < deadline:
        got.extend(arrived(listener, 1, timeout=max(deadline - time.monotonic(), 0.01)))
    return got


def exited_at_its_start(where: set[str]) -> bool:
    """Whether one of the interrupts landed as the block's exit began (before its first line)."""
    exits = ("__exit__", "__aexit__", "_exit_block", "_aexit_block")
    return any(w.split()[0] in exits and w.endswith("begins") for w in where)


@pytest.mark.parametrize("nested", [False, True], ids=["alone", "in_an_outer_block"])
def test_an_interrupt_leaving_batch_loses_no_later_submission(
    configured: object, listener: Conn, nested: bool
) -> None:
    """An exception a signal handler raised as the block's exit began (before its first line
    ran) left its batch open and current: every later .delay() of the thread was held by it,
    never sent, and a later block joined it as its outer one. Tried at each point of leaving
    the block, with the exception kept (as an application keeping its errors keeps their
    tracebacks, and the frames in them)."""
    must: list[str] = []  # submitted after a block, or in a block left without an exception
    may: list[str] = []  # submitted in a block an exception cut short as it was left
    kept: list[BaseException] = []
    where: set[str] = set()
    caller = sys._getframe()
    with batch() if nested else contextlib.nullcontext():
        for n in range(1000):
            tracer = InterruptAt(n, DispatcherCancel())
            try:
                with batch():
                    inside = tasks.add.delay(n, 0).uuid
                    tracer.arm(caller)
                tracer.disarm(caller)
                must.append(inside)
            except DispatcherCancel as exc:
                tracer.disarm(caller)
                kept.append(exc)
                where.add(tracer.where)
                may.append(inside)
            must.append(tasks.add.delay(n, 1).uuid)
            with batch():
                must.append(tasks.add.delay(n, 2).uuid)
            if not tracer.fired:
                break
    assert exited_at_its_start(where), where
    last = tasks.add.delay(0, 0).uuid
    got = arrived_through(listener, last)
    assert len(got) == len(set(got))  # none twice
    assert set(must) | {last} <= set(got) <= set(must) | set(may) | {last}


@pytest.mark.filterwarnings("ignore:coroutine '.*' was never awaited:RuntimeWarning")
def test_an_interrupt_leaving_abatch_loses_no_later_submission(
    configured: object, listener: Conn
) -> None:
    """The same for ``async with abatch()``, where the exception may also land in the caller
    as the call making the exit's coroutine returns, before it is awaited (it never runs)."""
    must: list[str] = []
    may: list[str] = []
    kept: list[BaseException] = []
    where: set[str] = set()

    async def attempts() -> str:
        caller = sys._getframe()
        for n in range(1000):
            tracer = InterruptAt(n, DispatcherCancel())
            try:
                async with abatch():
                    inside = (await tasks.add.adelay(n, 0)).uuid
                    tracer.arm(caller)
                tracer.disarm(caller)
                must.append(inside)
            except DispatcherCancel as exc:
                tracer.disarm(caller)
                kept.append(exc)
                where.add(tracer.where)
                may.append(inside)
            must.append((await tasks.add.adelay(n, 1)).uuid)
            async with abatch():
                must.append((await tasks.add.adelay(n, 2)).uuid)
            if not tracer.fired:
                break
        last = (await tasks.add.adelay(0, 0)).uuid
        await aclose_connections()
        return last

    last = asyncio.run(attempts())
    assert exited_at_its_start(where), where
    assert any(w.startswith("attempts") for w in where)  # (the coroutine made, not awaited)
    got = arrived_through(listener, last)
    assert len(got) == len(set(got))
    assert set(must) | {last} <= set(got) <= set(must) | set(may) | {last}


def test_a_block_entered_twice_is_refused_and_leaves_no_batch_behind(
    configured: object, listener: Conn
) -> None:
    """Entering the same block object again (a helper given it, say) replaced its batch: the
    outer exit then failed ("Token has already been used once") and left the outer batch
    open and current, holding what the thread submitted next."""

    def enter_twice() -> None:
        block = batch()
        with block:
            tasks.add.delay(1, 0)
            with block:
                tasks.add.delay(2, 0)

    with pytest.raises(RuntimeError, match="entered already"):
        enter_twice()
    after = tasks.add.delay(3, 0).uuid
    assert arrived(listener, 1) == [after]  # (the block raised: nothing of it was sent)
    assert nothing_more(listener)

    async def enter_twice() -> None:
        block = abatch()
        async with block:
            await tasks.add.adelay(4, 0)
            async with block:
                await tasks.add.adelay(5, 0)

    async def twice() -> str:
        with pytest.raises(RuntimeError, match="entered already"):
            await enter_twice()
        uuid = (await tasks.add.adelay(6, 0)).uuid
        await aclose_connections()
        return uuid

    after = asyncio.run(twice())
    assert arrived(listener, 1) == [after]
    assert nothing_more(listener)


FORK_IN_BATCH = """
import json, multiprocessing, os, sys
from dispatcher.config import setup
from dispatcher.publish import batch
from support import tasks

dsn, channel, how, out = sys.argv[1:]
setup({"version": 1, "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}}})
tasks.add.delay(0, 0)  # the connection is open before the fork: the child opens its own
sent = {}

def in_child(n):
    return tasks.add.delay(n, 2).uuid

with batch():
    sent["before"] = tasks.add.delay(1, 0).uuid
    if how == "pool":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            sent["children"] = pool.map(in_child, range(4))
    else:
        pid = os.fork()
        mine = tasks.add.delay(2, 1 if pid else 2).uuid
        if pid == 0 and how == "child_exits":
            with open(out, "w") as file:
                json.dump([mine], file)
            os._exit(0)  # still in the block, as a pool's worker ends
        if pid:
            sent["parent"] = mine
    sent.setdefault("before_end", tasks.add.delay(3, 0).uuid)
if how != "pool" and pid == 0:
    with open(out, "w") as file:
        json.dump([mine, sent["before_end"]], file)
    os._exit(0)
if how != "pool":
    os.waitpid(pid, 0)
    with open(out) as file:
        sent["children"] = json.load(file)
print(json.dumps(sent))
"""


@pytest.mark.parametrize("how", ["pool", "child_exits", "both_leave"])
def test_a_fork_inside_batch_neither_loses_nor_doubles_a_submission(
    configured: object, pg_dsn: str, channel: str, listener: Conn, tmp_path: Path, how: str
) -> None:
    """A multiprocessing pool made in the block: its workers' submissions were held by the
    batch they inherited, never sent. A child leaving the block: it sent the parent's
    submissions from before the fork a second time."""
    tests_folder = Path(tasks.__file__).parents[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests_folder), *sys.path])}
    out = tmp_path / "child.json"
    child = subprocess.run(
        [sys.executable, "-c", FORK_IN_BATCH, pg_dsn, channel, how, str(out)],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    sent = json.loads(child.stdout)
    expected = [sent["before"], sent["before_end"], *sent["children"]]
    if "parent" in sent:
        expected.append(sent["parent"])
    got = arrived(listener, len(expected) + 1)[1:]  # (the first one opened the connection)
    assert sorted(got) == sorted(expected)
    assert nothing_more(listener)  # none twice
    if how == "both_leave":
        assert "a batch() block entered before this process was forked" in child.stderr


SIGNAL_HANDLER_PUBLISHES = """
import json, signal, sys, threading, time, faulthandler
import psycopg
from dispatcher.config import setup
from dispatcher.publish import PublishError
from dispatcher.publish.provider_registry_sync import shared_provider
from support import tasks

faulthandler.dump_traceback_later(30, exit=True)  # a hang: its stacks, then exit
dsn, channel = sys.argv[1:]
setup({"version": 1, "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}}})
published, refused = [], []

def first(signum, frame):  # the thread it interrupted is sending
    published.append(tasks.add.delay(7, 7).uuid)
    # A slow statement of its own, which a second handler interrupts.
    threading.Thread(target=signal_once_running, args=("second", signal.SIGUSR2)).start()
    shared_provider(dsn).execute("SELECT pg_sleep(1) /* second " + channel + " */", ())

def second(signum, frame):  # the thread it interrupted is sending for the first handler
    try:
        tasks.add.delay(9, 9)
    except PublishError as exc:
        refused.append(str(exc))

def signal_once_running(tag, signum):
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
        while not conn.execute(query, (f"%{tag} {channel}%",)).fetchone():
            time.sleep(0.01)
    signal.pthread_kill(threading.main_thread().ident, signum)

signal.signal(signal.SIGUSR1, first)
signal.signal(signal.SIGUSR2, second)
threading.Thread(target=signal_once_running, args=("first", signal.SIGUSR1)).start()
# A statement of the SDK's own connection under way: the thread holds its locks.
shared_provider(dsn).execute(f"SELECT pg_sleep(1) /* first {channel} */", ())
published.append(tasks.add.delay(8, 8).uuid)
print(json.dumps({"published": published, "refused": refused}))
"""


def test_a_signal_handler_publishing_while_its_thread_sends_does_not_hang(
    configured: object, pg_dsn: str, channel: str, listener: Conn
) -> None:
    """It waited for ever for the locks of the connection the thread it interrupted held.
    A handler interrupting a handler's send is refused, saying so."""
    tests_folder = Path(tasks.__file__).parents[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests_folder), *sys.path])}
    child = subprocess.run(
        [sys.executable, "-c", SIGNAL_HANDLER_PUBLISHES, pg_dsn, channel],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    outcome = json.loads(child.stdout)
    assert len(outcome["published"]) == 2
    assert sorted(arrived(listener, 2)) == sorted(outcome["published"])
    assert nothing_more(listener)
    [refusal] = outcome["refused"]
    assert "a signal handler (or a __del__) submitted while its thread was sending" in refusal
    assert "nothing was sent" in refusal


def run_child(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 50
) -> Any:
    """Run *script* in a Python child with the tests' modules; return what it printed (JSON).

    *timeout* stays below the test's own limit, and above the child's watchdog
    (``faulthandler``), so that a hang shows the child's stacks rather than pytest's.
    """
    tests_folder = Path(tasks.__file__).parents[1]
    child = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ
        | (env or {})
        | {"PYTHONPATH": os.pathsep.join([str(tests_folder), *sys.path])},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout)


FACTORY_HANDLER_PUBLISHES = """
import faulthandler, json, signal, sys, threading, time
import psycopg
from dispatcher.config import setup
from dispatcher.publish import PublishError
from support import app_connections, tasks

faulthandler.dump_traceback_later(30, exit=True)  # a hang: its stacks, then exit
dsn, channel, how = sys.argv[1:]
app = app_connections.current = psycopg.connect(dsn, autocommit=how != "in_a_transaction")
setup({"version": 1, "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel],
       "connection_factory": "support.app_connections.connection"}}})
published, refused = [], []

def handler(signum, frame):  # the thread it interrupted runs a statement on app
    try:
        if how == "given_the_connection":
            published.append(tasks.add.apply_async(args=[1, 1], connection=app).uuid)
        else:
            published.append(tasks.add.delay(1, 1).uuid)
    except PublishError as exc:
        refused.append(str(exc))

def signal_once_running():
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
        while not conn.execute(query, (f"%app {channel}%",)).fetchone():
            time.sleep(0.01)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

signal.signal(signal.SIGUSR1, handler)
threading.Thread(target=signal_once_running).start()
app.execute(f"SELECT pg_sleep(1) /* app {channel} */")  # the application's own statement
if how == "in_a_transaction":
    app.commit()
published.append(tasks.add.delay(2, 2).uuid)  # the application's, afterwards
if how == "in_a_transaction":
    app.commit()
print(json.dumps({"published": published, "refused": refused}))
"""


@pytest.mark.parametrize("how", ["autocommit", "in_a_transaction", "given_the_connection"])
def test_a_signal_handler_publishing_on_the_connection_its_thread_uses_does_not_hang(
    pg_dsn: str, channel: str, listener: Conn, how: str
) -> None:
    """With ``connection_factory`` (the application's connection, as AWX sets it up), a
    handler submitting while its thread ran any statement on that connection waited for
    ever for the connection's lock. In autocommit mode the task is sent at once on the SDK's
    own connection, as it would have been on the application's; in a transaction (or on a
    connection the call names) it is refused, saying why."""
    outcome = run_child(FACTORY_HANDLER_PUBLISHES, pg_dsn, channel, how)
    if how == "autocommit":
        assert outcome["refused"] == []
        assert sorted(arrived(listener, 2)) == sorted(outcome["published"])
    else:
        [refusal] = outcome["refused"]
        assert "this thread is in the middle of a statement on it" in refusal
        assert "nothing was sent" in refusal
        assert arrived(listener, 2) == outcome["published"]  # the application's own, only
    assert nothing_more(listener)


REENTER_ANYWHERE = """
import dis, faulthandler, json, sys
from dispatcher.config import reset
from dispatcher.publish import close_connections
from support import tasks

POINT_WATCHDOG = float(sys.argv[1])  # seconds for one point
FILES = ("/dispatcher/config/", "/dispatcher/publish/")
AFTER = frozenset(dis.opmap[n] for n in ("CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD") if n in dis.opmap)


class PublishAt:
    # Submits at the n-th point of the SDK's frames where a signal handler may run, in the
    # thread, as a handler that publishes does (the trace function runs untraced).
    def __init__(self, n, call):
        self.left, self.call, self.fired, self.last = n, call, False, {}

    def __call__(self, frame, event, arg):
        if not any(f in frame.f_code.co_filename for f in FILES):
            return None
        frame.f_trace_opcodes = True
        if event == "call" and frame not in self.last:
            self.last[frame] = None
            self.point()
        return self.local

    def local(self, frame, event, arg):
        if event != "opcode" or self.fired:
            return self.local
        after = self.last.get(frame)
        self.last[frame] = frame.f_code.co_code[frame.f_lasti]
        if after in AFTER:
            self.point()
        return self.local

    def point(self):
        if not self.fired:
            self.fired = self.left == 0
            self.left -= 1
            if self.fired:
                self.last.clear()
                self.call()


sent, failed = [], []

def handler(n):
    def publish():
        try:
            sent.append(tasks.add.delay(n, 1).uuid)
        except Exception as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
    return publish

for n in range(10000):
    # Armed again at each point: a point that hangs shows its stacks, however slow the
    # machine is over all the points (one point takes milliseconds).
    faulthandler.dump_traceback_later(POINT_WATCHDOG, exit=True)
    reset()  # the config is read from its file again, by the first submission
    close_connections()  # which opens the connection again
    publisher = PublishAt(n, handler(n))
    sys.settrace(publisher)
    try:
        uuid = tasks.add.delay(n, 0).uuid
    finally:
        sys.settrace(None)
    sent.append(uuid)
    if not publisher.fired:
        break
faulthandler.cancel_dump_traceback_later()
print(json.dumps({"sent": sent, "failed": failed, "points": n}))
"""
# The limits, from the smallest: one point (a hang), then the child's total (some 700
# points: ~6 s of CPU, up to a minute on a loaded machine), then pytest's.
REENTER_POINT_WATCHDOG = 10
REENTER_CHILD_LIMIT = 240


@pytest.mark.timeout(REENTER_CHILD_LIMIT + 60)
def test_a_signal_handler_publishing_anywhere_in_the_first_submission_does_not_hang(
    pg_dsn: str, channel: str, listener: Conn, tmp_path: Path
) -> None:
    """A handler (or a __del__) submitting while its thread's first submission read the
    config file waited for ever for the lock held over the reading (and for the one held
    while the brokers are made). Tried at each point of a first submission."""
    config = tmp_path / "dispatcher.yml"
    config.write_text(
        json.dumps(
            {"version": 1, "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": [channel]}}}
        )
    )
    outcome = run_child(
        REENTER_ANYWHERE,
        str(REENTER_POINT_WATCHDOG),
        env={"DISPATCHER_CONFIG_FILE": str(config)},
        timeout=REENTER_CHILD_LIMIT,
    )
    assert outcome["failed"] == []
    assert outcome["points"] > 100
    assert sorted(arrived(listener, len(outcome["sent"]), timeout=30)) == sorted(outcome["sent"])
    assert nothing_more(listener)


class Deadline(Exception):
    """What a signal-based deadline raises (RQ's job timeout, timeout-decorator...)."""


def test_a_send_cut_by_an_exception_leaves_the_connection_usable_and_is_not_resent(
    pg_dsn: str, channel: str, listener: Conn
) -> None:
    """Cut while it waited for the reply, it left the shared connection busy: every other
    thread then failed with "another command is already in progress"."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": proxy.dsn, "channels": [channel]}}})
    try:
        warm = tasks.add.delay(0, 0).uuid
        assert arrived(listener, 1) == [warm]
        proxy.swallow_replies()  # the next NOTIFY is delivered, its reply never comes

        def deadline(signum: int, frame: object) -> None:
            raise Deadline("the request took too long")

        def signal_once_delivered() -> None:
            if arrived(listener, 1) == ["cut"]:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

        previous = signal.signal(signal.SIGUSR1, deadline)
        signaller = threading.Thread(target=signal_once_delivered)
        try:
            signaller.start()
            with pytest.raises(Deadline):
                tasks.add.apply_async(args=[1, 0], uuid="cut")
            signaller.join(10)
        finally:
            signal.signal(signal.SIGUSR1, previous)
        sent: list[Submission] = []
        failures: list[BaseException] = []

        def publish(n: int) -> None:
            try:
                sent.append(tasks.add.delay(2, n))
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=publish, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert failures == []
        assert sorted(arrived(listener, 3)) == sorted(s.uuid for s in sent)
        assert nothing_more(listener)  # the cut one was not sent again
    finally:
        close_connections()
        reset()
        proxy.down()


def test_a_shared_connection_left_busy_is_replaced_before_the_next_send(
    pg_dsn: str, channel: str, listener: Conn
) -> None:
    """Whatever leaves the SDK's connection with a statement under way (here, one sent on
    ``ConnectionProvider.connection()`` whose reply never comes), the next submission does
    not fail with "another command is already in progress"."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": proxy.dsn, "channels": [channel]}}})
    try:
        connection = shared_provider(proxy.dsn).connection()
        proxy.swallow_replies()
        connection.pgconn.send_query(b"SELECT 1")
        sent = tasks.add.delay(1, 2).uuid
        assert arrived(listener, 1) == [sent]
    finally:
        close_connections()
        reset()
        proxy.down()


def drive(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Run *coroutine* without any event loop, as a foreign one (trio's) would."""
    try:
        coroutine.send(None)
    finally:
        coroutine.close()


def acontrol_over_the_socket() -> Coroutine[Any, Any, None]:
    setup({"version": 1, "brokers": {"socket": {"path": "/nonexistent/dispatcher.sock"}}})
    return acontrol("running")


@pytest.mark.parametrize(
    "call",
    [
        lambda: tasks.add.adelay(1, 2),
        lambda: asubmit_task("support.tasks.add", args=[1, 2]),
        lambda: acontrol_with_reply("running", timeout=0.1),
        lambda: acontrol("running"),
        acontrol_over_the_socket,
    ],
    ids=["adelay", "asubmit_task", "acontrol_with_reply", "acontrol", "acontrol_over_the_socket"],
)
def test_the_async_api_without_an_asyncio_loop_says_to_use_the_sync_one(
    configured: object, call: Callable[[], Coroutine[Any, Any, Any]]
) -> None:
    """It was a bare "RuntimeError: no running event loop"."""
    with pytest.raises(AsyncioRequired) as raised:
        drive(call())
    assert isinstance(raised.value, DispatcherError)
    assert isinstance(raised.value, RuntimeError)  # (what it was: `except` clauses still hold)
    assert "asyncio" in str(raised.value)
    assert "trio.to_thread.run_sync" in str(raised.value)


def test_the_async_api_under_trio_says_to_use_the_sync_one(configured: object) -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        await tasks.add.adelay(1, 2)

    with pytest.raises(AsyncioRequired, match=r"trio\.to_thread\.run_sync"):
        trio.run(main)
