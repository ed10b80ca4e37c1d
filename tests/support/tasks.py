"""Tasks registered for the tests (their names start with ``support.tasks.``)."""

from __future__ import annotations

from typing import Any

from dispatcher.publish import task


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue="support_emails", timeout=30, on_duplicate="serial")
def send_email(to: str, subject: str = "hello") -> str:
    return f"{to}: {subject}"


@task(name="support.renamed", bind=True, delay=2)
def bound(dispatcher: Any, value: int) -> int:
    return value


@task
def tidy(days: int) -> int:
    """Registered by a bare ``@task``, Celery's ``@shared_task`` style."""
    return days


@task
class Sweep:
    def run(self, area: str) -> str:
        return area


@task(decorate=False)
def undecorated() -> None:
    """Registered, without submission methods."""


@task()
class Report:
    def run(self, period: str) -> str:
        return period


def channel_from_settings() -> str:
    return "support_dynamic"


@task(queue=channel_from_settings)
def dynamic() -> None:
    """Its channel is computed at each submission."""
