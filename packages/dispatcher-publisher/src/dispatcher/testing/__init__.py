"""Run or record tasks in your test suite, without PostgreSQL or a running service.

::

    from dispatcher.testing import captured, eager

    def test_signup_sends_a_welcome_email():
        with eager() as mode:                  # every submission runs here and now
            signup("someone@example.com")
        assert mode.runs[0].result == "sent"

    def test_signup_queues_a_welcome_email():
        with captured() as tasks:              # submissions are recorded, not sent
            signup("someone@example.com")
        [email] = tasks.for_task(send_welcome)
        assert email.args == ["someone@example.com"]
        tasks.run_all()

Submissions are built and checked exactly as when publishing (a bad argument raises the
same :class:`~dispatcher.publish.InvalidSubmission`), then taken where they would leave the
process: ``.delay()``, ``.apply_async()``, ``submit_task()``, ``batch()`` and their asyncio
twins, with or without ``connection=``, durable queues included. Only tasks registered in
this process are accepted. Tasks run as a worker runs them (arguments through JSON, a bound
object for ``bind=True``, coroutines awaited, errbacks and callbacks), without timeouts,
delays or ``on_duplicate``.

pytest fixtures (``dispatcher_eager``, ``dispatcher_captured``) come with
``pytest_plugins = ["dispatcher.testing.pytest_plugin"]`` in your top-level ``conftest.py``.
"""

from dispatcher.testing.bound import InMemoryBoundTask
from dispatcher.testing.modes import DEFAULT_QUEUE, Captured, Eager, NotRecorded, captured, eager
from dispatcher.testing.records import CapturedTask, RunOutcome, TaskRun

__all__ = [
    "DEFAULT_QUEUE",
    "Captured",
    "CapturedTask",
    "Eager",
    "InMemoryBoundTask",
    "NotRecorded",
    "RunOutcome",
    "TaskRun",
    "captured",
    "eager",
]
