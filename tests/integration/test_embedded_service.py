"""A service run inside the application's process leaves that process as it found it.

``run_service()``, or ``await Service(settings).run()`` in the application's own asyncio
loop, from a script: the application's handlers of the stop signals work again once the
service returns, its objects are collected, several services in one loop each stop on one
SIGTERM, and a call from where a service cannot run says what to do instead.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.service import TESTS, wait_until

pytestmark = pytest.mark.timeout(90)

APP_SIGNAL_HANDLERS = """
import logging, os, signal, sys, time

logging.basicConfig(level=logging.INFO)

got = []


def app_handler(number, frame):
    got.append(number)


STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
for number in STOPS:
    signal.signal(number, app_handler)

from dispatcher.config import setup
from dispatcher.server import run_service

setup(file_path=sys.argv[1])
status = run_service()
kept = [signal.getsignal(number) is app_handler for number in STOPS]
print("HANDLERS KEPT", kept, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
deadline = time.monotonic() + 10
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
print("AFTER", status, got == [signal.SIGTERM], flush=True)
"""

APP_LOOP_SIGNAL_HANDLER = """
import asyncio, logging, os, signal, sys

logging.basicConfig(level=logging.INFO)

from dispatcher.config import load_settings
from dispatcher.server import Service


async def main():
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, got.set)
    status = await Service(load_settings(file_path=sys.argv[1])).run()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(got.wait(), 10)
    print("AFTER", status, True, flush=True)


asyncio.run(main())
"""

TWO_SERVICES = """
import asyncio, logging, sys

logging.basicConfig(level=logging.INFO)

from dispatcher.config import load_settings
from dispatcher.server import Service


async def main():
    services = [Service(load_settings(file_path=path)) for path in sys.argv[1:3]]
    statuses = await asyncio.wait_for(asyncio.gather(*(s.run() for s in services)), 30)
    print("AFTER", statuses, flush=True)


asyncio.run(main())
"""

APP_LOOP_SERVES = """
import asyncio, logging, os, signal, sys, time

logging.basicConfig(level=logging.INFO)

from dispatcher.config import load_settings, setup
from dispatcher.control import acontrol_with_reply
from dispatcher.publish import asubmit_task
from dispatcher.server import Service


async def main():
    setup(file_path=sys.argv[1])
    service = asyncio.create_task(Service(load_settings(file_path=sys.argv[1])).run())
    answered = 0
    deadline = time.monotonic() + 30
    while not answered and time.monotonic() < deadline and not service.done():
        result = await acontrol_with_reply("status", expected_replies=1, timeout=1)
        answered = len(result.replies)
    print("ANSWERED", answered, flush=True)
    await asubmit_task("support.service_tasks.record", args=[sys.argv[2], "ran"])
    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print("TASK RAN", os.path.exists(sys.argv[2]), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    print("AFTER", await asyncio.wait_for(service, 30), flush=True)


asyncio.run(main())
"""

APP_OBJECTS_COLLECTED = """
import gc, logging, sys, weakref

logging.basicConfig(level=logging.INFO)

from dispatcher.config import setup
from dispatcher.server import run_service


class Node:
    pass


node = Node()
node.itself = node  # a cycle: only the cyclic garbage collector frees it
alive = weakref.ref(node)
setup(file_path=sys.argv[1])
status = run_service()
del node
gc.collect()
print("AFTER", status, alive() is None, flush=True)
"""


def run_app(
    script: str,
    tmp_path: Path,
    configs: list[dict[str, Any]],
    *,
    services: int = 1,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    stops: bool = True,
) -> str:
    """Run *script* with the paths of *configs* (then *args*, and *env*), stop its services
    with one SIGTERM once *services* listen (unless not *stops*: the script stops them
    itself), and return what it wrote (it must exit with 0)."""
    paths = []
    for n, config in enumerate(configs):
        path = tmp_path / f"dispatcher-{n}.yml"
        path.write_text(json.dumps(config))
        paths.append(str(path))
    output = tmp_path / "output.txt"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", script, *paths, *(args or [])],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={
                "PYTHONPATH": str(TESTS),
                "PYTHONUNBUFFERED": "1",
                "PATH": "/usr/bin:/bin",
                **(env or {}),
            },
        )
    try:
        if stops:
            wait_until(lambda: output.read_text().count("listening on channels") >= services, 30)
            process.send_signal(signal.SIGTERM)
        status = process.wait(90 if stops else 120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    log = output.read_text()
    assert status == 0, log
    return log


def test_run_service_gives_the_apps_signal_handlers_back(
    service_config: dict[str, Any], tmp_path: Path
) -> None:
    """They were left at the defaults: the application's next SIGTERM killed it."""
    log = run_app(APP_SIGNAL_HANDLERS, tmp_path, [service_config])
    assert "HANDLERS KEPT [True, True, True]" in log, log
    assert "AFTER 0 True" in log, log


def test_a_service_in_the_apps_loop_gives_the_loops_signal_handler_back(
    service_config: dict[str, Any], tmp_path: Path
) -> None:
    """asyncio's remove_signal_handler() left SIGTERM at its default, the loop's handler gone."""
    log = run_app(APP_LOOP_SIGNAL_HANDLER, tmp_path, [service_config])
    assert "AFTER 0 True" in log, log


@pytest.mark.parametrize("given", [None, "pod-a"])
def test_one_sigterm_stops_every_service_of_a_loop_and_each_has_its_own_node_id(
    service_config: dict[str, Any], tmp_path: Path, channel: str, given: str | None
) -> None:
    """The second service's handler replaced the first's, which then ran on; both took the
    same default node id (host and pid), or both took $DISPATCHER_NODE_ID as it was."""
    other = json.loads(json.dumps(service_config))
    other["brokers"]["pg_notify"]["channels"] = [f"{channel}_b"]
    other["brokers"]["pg_notify"]["default_publish_channel"] = f"{channel}_b"
    env = None if given is None else {"DISPATCHER_NODE_ID": given}
    log = run_app(TWO_SERVICES, tmp_path, [service_config, other], services=2, env=env)
    assert "AFTER [0, 0]" in log, log
    started = re.findall(r"dispatcher service (\S+) started", log)
    assert len(set(started)) == len(started) == 2, log
    if given is not None:
        assert sorted(started) == [given, f"{given}-2"], log
    stopped = re.findall(r"dispatcher service (\S+) stopped", log)
    assert sorted(stopped) == sorted(started), log


def test_a_service_in_the_apps_plain_asyncio_loop_answers_control_and_runs_tasks(
    service_config: dict[str, Any], tmp_path: Path
) -> None:
    """Under asyncio.run() (not anyio's), with sniffio installed, the callbacks that read
    the listening connection found no async library: every control command failed with an
    internal error in intake (``NoEventLoopError``), and went unanswered."""
    evidence = tmp_path / "evidence.jsonl"
    log = run_app(APP_LOOP_SERVES, tmp_path, [service_config], args=[str(evidence)], stops=False)
    assert "ANSWERED 1" in log, log
    assert "TASK RAN True" in log, log
    assert "AFTER 0" in log, log
    assert "internal error" not in log, log


def test_run_service_leaves_the_apps_objects_collectable(
    service_config: dict[str, Any], tmp_path: Path
) -> None:
    """It froze every object of the process (gc.freeze()) for good: the application's
    cyclic garbage was never collected again."""
    log = run_app(APP_OBJECTS_COLLECTED, tmp_path, [service_config])
    assert "AFTER 0 True" in log, log


WHERE_IT_CANNOT_RUN = """
import asyncio, sys, threading

from dispatcher.config import load_settings, setup
from dispatcher.server import Service, run_service

setup(file_path=sys.argv[1])
case = sys.argv[2]


def from_a_thread(call):
    raised = []

    def run():
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    raise raised[0]


async def inside_a_loop():
    run_service()


try:
    if case == "run_service_in_a_thread":
        from_a_thread(run_service)
    elif case == "run_service_in_a_loop":
        asyncio.run(inside_a_loop())
    elif case == "service_in_a_thread":
        from_a_thread(lambda: asyncio.run(Service(load_settings(file_path=sys.argv[1])).run()))
    elif case == "service_under_trio":
        import trio

        trio.run(Service(load_settings(file_path=sys.argv[1])).run)
except Exception as exc:
    print("RAISED", type(exc).__module__, type(exc).__name__, exc)
"""


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("run_service_in_a_thread", "run_service() must be called from the main thread"),
        ("run_service_in_a_loop", "await Service(settings).run()"),
        ("service_in_a_thread", "Service.run() must be called from the main thread"),
        ("service_under_trio", "runs in an asyncio event loop only"),
    ],
)
def test_a_service_asked_to_run_where_it_cannot_says_what_to_do(
    service_config: dict[str, Any], tmp_path: Path, case: str, said: str
) -> None:
    """It was asyncio's or anyio's own message (set_wakeup_fd only works in main thread...,
    no running event loop), which named neither dispatcher nor what to do."""
    if case == "service_under_trio":
        pytest.importorskip("trio")
    path = tmp_path / "dispatcher.yml"
    path.write_text(json.dumps(service_config))
    done = subprocess.run(
        [sys.executable, "-c", WHERE_IT_CANNOT_RUN, str(path), case],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert "RAISED dispatcher.server.service CannotRunHere" in output, output
    assert said in output, output
