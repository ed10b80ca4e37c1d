"""Our service runs tasks registered with dispatcherd's ``@task``, when dispatcherd is there.

The service runs in our environment with dispatcherd importable beside it (its overlay on
``PYTHONPATH``: dispatcherd and PyYAML only, sharing our psycopg; see
:attr:`support.dispatcherd.Dispatcherd.overlay`). dispatcherd 2026.5.27 comes from the
package index, installed once under ``.tmp/``; the tests are skipped, saying why, when it
cannot be. The tasks are :mod:`support.dispatcherd_decorated`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import dispatcherd
from support.dispatcherd import Dispatcherd, environment_variables
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = pytest.mark.slow  # may create dispatcherd's virtual environment

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

THEIRS = "support.dispatcherd_decorated."
OURS = "support.follow_up_tasks."


@pytest.fixture(scope="module")
def dispatcherd_env() -> Dispatcherd:
    return dispatcherd.environment()


@pytest.fixture
def with_dispatcherd(dispatcherd_env: Dispatcherd) -> dict[str, str]:
    """The service's environment variables: dispatcherd importable, as if installed."""
    return {"PYTHONPATH": environment_variables(dispatcherd_env.overlay)["PYTHONPATH"]}


def message(task: str, path: Path, *args: Any, **options: Any) -> str:
    """A task message for *task*, whose first argument is the evidence file."""
    return json.dumps({"task": task, "args": [str(path), *args], **options})


def by_label(evidence: Evidence, label: str) -> list[dict[str, Any]]:
    return [r for r in evidence.records() if r.get("label") == label]


def test_tasks_registered_with_dispatcherds_task_run(
    start_service: StartService,
    service_config: dict[str, Any],
    with_dispatcherd: dict[str, str],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["tasks"]["modules"] = [
        "support.dispatcherd_decorated",
        "support.follow_up_tasks",
    ]
    service = start_service(service_config, env=with_dispatcherd)
    path = evidence.path
    notify(channel, message(THEIRS + "record", path, "a", kwargs={"k": 1}))
    notify(channel, message(THEIRS + "bound", path, uuid="u-bound"))
    notify(channel, message(THEIRS + "Adder", path, 2, 3))
    notify(channel, message(THEIRS + "claimed", path))
    notify(channel, message(THEIRS + "undecorated", path, uuid="u-undecorated"))
    wait_until(lambda: len(evidence.records()) == 4, timeout=10)
    [recorded] = by_label(evidence, "record")
    assert (recorded["args"], recorded["kwargs"]) == (["a"], {"k": 1})
    [bound] = by_label(evidence, "bound")
    assert bound["uuid"] == "u-bound"  # bind=True from dispatcherd's registration
    assert isinstance(bound["worker_id"], int)
    assert bound["running"] == ["u-bound"]  # its control() reached our service
    assert by_label(evidence, "Adder")[0]["sum"] == 5
    assert by_label(evidence, "claimed")[0]["by"] == "ours"  # our registration kept its name
    service.wait_for_log(
        r"dispatcherd task support\.dispatcherd_decorated\.claimed not adopted: the name is "
        r"registered with our @task for support\.follow_up_tasks\.ours_too"
    )
    service.wait_for_log(
        r"\(uuid u-undecorated\): task 'support\.dispatcherd_decorated\.undecorated' is not "
        r"registered"
    )
    assert "local" not in service.log  # defined inside a function: dispatcherd cannot run it


def test_dispatcherds_cancel_and_exit_mean_what_they_mean_in_dispatcherd(
    start_service: StartService,
    service_config: dict[str, Any],
    with_dispatcherd: dict[str, str],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["tasks"]["modules"] = ["support.dispatcherd_decorated"]
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config, env=with_dispatcherd, log_level="DEBUG")
    path = evidence.path
    notify(
        channel, message(THEIRS + "sleep_catching_their_cancel", path, 30, timeout=0.5, uuid="u-c")
    )
    notify(channel, message(THEIRS + "record", path, "after the cancel"))
    notify(channel, message(THEIRS + "exit_their_way", path, uuid="u-exit"))
    notify(channel, message(THEIRS + "record", path, "after the exit"))
    wait_until(lambda: len(evidence.records()) == 5, timeout=10)
    start, cancelled, after_cancel, exited, after_exit = evidence.records()
    assert (start["event"], cancelled["event"]) == ("start", "cancelled")
    assert cancelled["kind"] == "DispatcherCancel"  # caught as dispatcherd's, in the task
    assert cancelled["time"] - start["time"] < 1.5
    assert start["pid"] == after_cancel["pid"] == exited["pid"]  # the worker survived the cancel
    assert after_exit["pid"] != exited["pid"]  # dispatcherd's DispatcherExit ended it
    # A job's end is logged at DEBUG: both ended as they should, neither as "failed".
    service.wait_for_log(r"\(uuid u-c\) finished timeout")
    service.wait_for_log(r"\(uuid u-exit\) finished ok")
    assert not re.search(r"\(uuid u-(c|exit)\) failed", service.log)
    service.wait_for_log(r"\(uuid u-c\) exceeded its timeout of 0\.5 s")


def test_dispatcherd_is_not_loaded_when_the_task_modules_do_not_use_it(
    start_service: StartService,
    service_config: dict[str, Any],
    with_dispatcherd: dict[str, str],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["tasks"]["modules"] = ["support.follow_up_tasks"]
    service = start_service(service_config, env=with_dispatcherd)
    notify(channel, message(OURS + "modules_loaded", evidence.path))
    notify(channel, message(THEIRS + "record", evidence.path, uuid="u-theirs"))
    [loaded] = evidence.wait_for(1)
    assert loaded["dispatcherd"] is False
    service.wait_for_log(r"\(uuid u-theirs\): task 'support\.dispatcherd_decorated\.record'")
