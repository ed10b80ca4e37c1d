"""Step 1, the library: the tasks. Both the service and the publishers import this module."""

import time

from dispatcher.publish import task


@task(queue="quickstart")
def hello(name: str) -> str:
    """A quick task."""
    return f"hello, {name}"


@task(queue="quickstart", timeout=1)
def too_slow(seconds: float) -> None:
    """Runs longer than its timeout: the service cancels it after 1 s."""
    time.sleep(seconds)


@task(queue="quickstart", on_duplicate="serial")
def nightly_report(period: str) -> None:
    """Identical submissions run one after the other, never side by side."""
    time.sleep(0.2)


@task(queue="quickstart")
def flaky() -> None:
    """Always fails: the error is logged with the task's name and uuid."""
    raise RuntimeError("this one always fails")


@task(queue="quickstart")
def sleep(seconds: float) -> None:
    """Long enough to be seen running with `dispatcherctl running`, and cancelled."""
    time.sleep(seconds)
