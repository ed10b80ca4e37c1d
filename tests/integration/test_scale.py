"""A service at scale: thousands of registered tasks, floods of unknown names, big replies.

The task modules are generated into a folder of the test's own (on ``PYTHONPATH``); each task
writes a record to the evidence file, naming itself and its label.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.service import TESTS, Evidence, ServiceProcess, wait_until

HEADER = """
import json

from dispatcher.publish import task


def _record(path, **fields):
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(json.dumps(fields) + "\\n")

"""


def function_name(number: int, width: int) -> str:
    """The name of generated task *number*: ``t<number>``, padded to *width* with ``x``."""
    name = f"t{number}_"
    return name + "x" * (width - len(name)) if width else name.rstrip("_")


def task_module(folder: Path, module: str, count: int, width: int = 0) -> list[str]:
    """Write *module* with *count* tasks into *folder*; return their registered names."""
    names = [function_name(number, width) for number in range(count)]
    source = HEADER + "".join(
        f"\n@task()\ndef {name}(path, label=''):\n    _record(path, task={name!r}, label=label)\n"
        for name in names
    )
    (folder / f"{module}.py").write_text(source)
    return [f"{module}.{name}" for name in names]


def start(
    config: dict[str, Any], module: str, code: Path, folder: Path, *args: str
) -> ServiceProcess:
    config["tasks"]["modules"] = [module]
    folder.mkdir()
    path = os.pathsep.join([str(code), str(TESTS)])
    return ServiceProcess(config, folder, env={"PYTHONPATH": path}).start(*args)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    return folder


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_CONFIG_FILE")}
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


# The report of the task modules' import once had to fit in one 64 KiB packet between the
# fork server and the service: beyond (some 3,000 short names, or 260 of the longest), the
# service waited for it for ever, and the producers' task names went unchecked.
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("module", "count", "width"),
    [("scale_many", 4000, 0), ("scale_long", 300, 255 - len("scale_long."))],
)
def test_a_service_with_any_number_of_tasks_starts_and_runs_them(
    service_config: dict[str, Any],
    code: Path,
    tmp_path: Path,
    evidence: Evidence,
    channel: str,
    notify: Callable[[str, str], None],
    module: str,
    count: int,
    width: int,
) -> None:
    names = task_module(code, module, count, width)
    assert max(len(name) for name in names) <= 255
    service = start(service_config, module, code, tmp_path / "service")
    try:
        service.wait_ready(timeout=60)
        service.wait_for_log(rf"{count} registered tasks")
        for name in (names[0], names[-1]):
            notify(channel, json.dumps({"task": name, "args": [str(evidence.path), "ran"]}))
        records = evidence.wait_for(2, timeout=30)
        ran = sorted(record["task"] for record in records)
        assert ran == sorted(name.rpartition(".")[2] for name in (names[0], names[-1]))
        assert service.stop() == 0
    finally:
        service.kill_everything()

    # The producers' task names are checked against the whole list.
    typo = names[-1].replace(".t", ".T")
    service_config["producers"] = {"scheduled": {typo: {"schedule": 60}}}
    refused = start(service_config, module, code, tmp_path / "refused")
    try:
        assert refused.wait(60) == 3, refused.log
        headline = (
            f"cannot start: producers.scheduled[{typo!r}]: no such registered task; "
            f"did you mean {names[-1]!r}?"
        )
        # (A line that long is cut in the log.)
        assert headline[:200] in refused.log
    finally:
        refused.kill_everything()


@pytest.mark.timeout(180)
def test_a_reload_that_grows_the_tasks_past_thousands_serves_them(
    service_config: dict[str, Any],
    code: Path,
    tmp_path: Path,
    evidence: Evidence,
    channel: str,
    notify: Callable[[str, str], None],
) -> None:
    task_module(code, "scale_growing", 2)
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start(service_config, "scale_growing", code, tmp_path / "service", "--reload")
    try:
        service.wait_ready(timeout=60)
        service.wait_for_log(r"reload: watching .*code")
        names = task_module(code, "scale_growing", 4000)
        service.wait_for_log(r"reloaded: 1 workers restarted, 4000 tasks registered", timeout=90)
        notify(channel, json.dumps({"task": names[-1], "args": [str(evidence.path), "new"]}))
        [record] = evidence.wait_for(1, timeout=30)
        assert record == {"task": "t3999", "label": "new"}
        assert "took more than" not in service.log
        assert service.stop() == 0
    finally:
        service.kill_everything()


def cpu_seconds(pid: int) -> float:
    """The CPU time process *pid* has used so far (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Each message naming an unregistered task once cost a "did you mean" looked up among every
# registered name (milliseconds with thousands): a burst of them stalled the service for
# seconds, holding up the tasks behind it and the control commands.
@pytest.mark.timeout(180)
def test_a_burst_of_unknown_task_names_costs_little_and_holds_nothing_up(
    service_config: dict[str, Any],
    code: Path,
    tmp_path: Path,
    evidence: Evidence,
    channel: str,
    pg_conn: psycopg.Connection[Any],
) -> None:
    names = task_module(code, "scale_flood", 3000)
    service = start(service_config, "scale_flood", code, tmp_path / "service")
    try:
        service.wait_ready(timeout=60)
        service.wait_for_log(r"3000 registered tasks")
        burst = 2000
        typos = [names[n].replace(".t", ".tx") for n in range(burst)]
        unknown = [json.dumps({"task": typo}) for typo in typos]
        valid = json.dumps({"task": names[-1], "args": [str(evidence.path), "after"]})
        before = cpu_seconds(service.pid)
        # One statement: the notifications come together, the valid task last.
        pg_conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) WITH ORDINALITY AS p(payload, n) "
            "ORDER BY n",
            (channel, [*unknown, valid]),
        )
        [record] = evidence.wait_for(1, timeout=60)
        used = cpu_seconds(service.pid) - before
        assert record == {"task": "t2999", "label": "after"}
        # Some 12 ms each before: 24 s. Now well under a millisecond each.
        assert used < 5.0, f"{used:.1f} s of CPU for {burst} unknown task names"
        alive = ctl(service.config_path, "--timeout", "20", "alive")
        assert alive.returncode == 0, alive.stderr
        # The first ones logged still say what was meant.
        assert f"task {typos[0]!r} is not registered (did you mean {names[0]!r}?)" in service.log, (
            service.log[:3000]
        )
        service.wait_for_log(r"similar lines? suppressed")
        assert service.stop() == 0
    finally:
        service.kill_everything()


# 10,000 queued tasks of 1 KiB each once made replies over the 8 MiB a client takes:
# ``running`` and ``cancel`` said "no answer" (and exit 1), though the cancel had happened.
@pytest.mark.timeout(180)
def test_running_and_cancel_answer_with_any_number_of_tasks_counting_those_not_listed(
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    evidence: Evidence,
    channel: str,
    pg_conn: psycopg.Connection[Any],
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    try:
        path = str(evidence.path)
        blocker = {"task": "support.service_tasks.sleep_then_record", "args": [path, 120]}
        pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(blocker)))
        evidence.wait_for(1, timeout=30)  # it runs: what follows waits behind it
        count, blob = 10_000, "x" * 1024
        queued = [
            json.dumps({"task": "support.service_tasks.record", "args": [path, n, blob]})
            for n in range(count)
        ]
        pg_conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS p(payload)",
            (channel, queued),
        )

        def waiting() -> int:
            status = ctl(service.config_path, "status", "--json")
            assert status.returncode == 0, status.stderr
            return int(json.loads(status.stdout)[0]["queued"])

        wait_until(lambda: waiting() == count, timeout=60, interval=0.5)

        running = ctl(service.config_path, "running", "--json")
        assert running.returncode == 0, running.stderr
        [reply] = json.loads(running.stdout)
        listed = [key for key, value in reply.items() if isinstance(value, dict)]
        assert 0 < len(listed) < count
        assert len(listed) + reply["omitted"] == count + 1
        shown = ctl(service.config_path, "running")
        assert shown.returncode == 0, shown.stderr
        assert f"  ... {reply['omitted']} more, not listed (too many for one reply)\n" in (
            shown.stdout
        )

        cancel = ctl(service.config_path, "cancel", "--task", "support.service_tasks.record")
        assert cancel.returncode == 0, cancel.stderr
        [more] = re.findall(r"^  \.\.\. (\d+) more, not listed", cancel.stdout, re.MULTILINE)
        rows = re.findall(r"^  queued-\d+ ", cancel.stdout, re.MULTILINE)
        assert len(rows) + int(more) == count, cancel.stdout[-2000:]
        assert "no answer" not in cancel.stderr
        assert waiting() == 0
        service.wait_for_log(
            rf"control cancel \(task='support.service_tasks.record'\): cancelled {count} tasks"
        )
    finally:
        service.kill_everything()


@pytest.mark.timeout(120)
def test_the_task_modules_see_the_service_config_checked_once(
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    channel: str,
    tmp_path: Path,
) -> None:
    """The fork server installs the config the service loaded (thousands of channels), as is."""
    channels = [channel, *(f"{channel}_{n}" for n in range(2000))]
    service_config["brokers"]["pg_notify"]["channels"] = channels
    service_config["tasks"]["modules"] = ["support.config_probe", "support.service_tasks"]
    probe = tmp_path / "probe.json"
    service = start_service(
        service_config, env={"DISPATCHER_TEST_CONFIG_PROBE": str(probe)}, wait=False
    )
    try:
        service.wait_ready(timeout=60)
        seen = json.loads(probe.read_text())
        assert seen == {"source": str(service.config_path), "channels": channels}
    finally:
        service.kill_everything()
