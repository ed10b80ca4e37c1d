"""Submit tasks to dispatcher services: the API a web application uses.

::

    from dispatcher.publish import task

    @task(queue="emails")
    def send_email(to: str) -> None: ...

    send_email.delay("someone@example.com")
    submit_task("myapp.tasks.send_email", args=["someone@example.com"])  # by name

Each submission is checked against the task-message schema before it is sent with one
NOTIFY; see :func:`submit_task` for the options, :func:`batch` to send many at once, and
pass ``connection=`` to send inside your own transaction (delivered on commit only).
"""

from dispatcher.publish.chunking import ChunkAssembler, split_message
from dispatcher.publish.decorator import TaskDecorator, TaskFunction, task
from dispatcher.publish.errors import (
    BrokerUnavailable,
    DispatcherCancel,
    DispatcherExit,
    InvalidSubmission,
    PublishError,
    RegistrationError,
)
from dispatcher.publish.messages import Submission, prepare_submission
from dispatcher.publish.registry import RegisteredTask, TaskRegistry, registry
from dispatcher.publish.submit_async import abatch, aclose_connections, asubmit_task
from dispatcher.publish.submit_sync import batch, close_connections, submit_task

__all__ = [
    "BrokerUnavailable",
    "ChunkAssembler",
    "DispatcherCancel",
    "DispatcherExit",
    "InvalidSubmission",
    "PublishError",
    "RegisteredTask",
    "RegistrationError",
    "Submission",
    "TaskDecorator",
    "TaskFunction",
    "TaskRegistry",
    "abatch",
    "aclose_connections",
    "asubmit_task",
    "batch",
    "close_connections",
    "prepare_submission",
    "registry",
    "split_message",
    "submit_task",
    "task",
]
