"""Submit tasks to dispatcher services: the API a web application uses.

::

    from dispatcher.publish import task

    @task(queue="emails")
    def send_email(to: str) -> None: ...

    send_email.delay("someone@example.com")
    submit_task("myapp.tasks.send_email", args=["someone@example.com"])  # by name

Each submission is checked against the task-message schema before it is sent with one
NOTIFY; see :func:`submit_task` for the options, :func:`batch` to send many at once, and
pass ``connection=`` to send inside your own transaction (delivered on commit only). A task
for a durable queue (listed under ``brokers.pg_queue.queues``) is stored as a job instead,
in the same ways; :func:`get_job` and :func:`jobs` read jobs back.

Every error raised here derives from :class:`DispatcherError` (and :class:`PublishError`
for a submission that failed). For code that sends over PostgreSQL on its own (a broker's
replies, a command-line tool): :class:`ConnectionProvider` and
:class:`AsyncConnectionProvider` (a shared autocommit connection that NOTIFYs and reconnects),
:func:`describe_server` and :func:`broker_unavailable` (errors that name the server, never
its password).
"""

# libpq first: without libpq, it says what to install (psycopg's ImportError does not);
# retiring lets go of the connections no config needs once another one is set up.
from dispatcher.publish import libpq, retiring  # noqa: F401
from dispatcher.publish.batching import Batch
from dispatcher.publish.broker_errors import broker_unavailable
from dispatcher.publish.chunking import ChunkAssembler, split_message
from dispatcher.publish.decorator import task
from dispatcher.publish.errors import (
    AsyncioRequired,
    BrokerUnavailable,
    DispatcherCancel,
    DispatcherExit,
    InvalidSubmission,
    PublishError,
    RegistrationError,
)
from dispatcher.publish.job import JOB_STATES, Job, JobState
from dispatcher.publish.messages import prepare_submission
from dispatcher.publish.processor_options import ProcessorOptions
from dispatcher.publish.provider_async import AsyncConnectionProvider
from dispatcher.publish.provider_registry_async import aclose_connections
from dispatcher.publish.provider_registry_sync import close_connections
from dispatcher.publish.provider_sync import ConnectionProvider
from dispatcher.publish.queue_async import aget_job, ajobs
from dispatcher.publish.queue_sync import get_job, jobs
from dispatcher.publish.registry import Queue, RegisteredTask, TaskRegistry, registry
from dispatcher.publish.server_description import describe_server
from dispatcher.publish.submission import Submission
from dispatcher.publish.submit_async import AsyncBatchBlock, abatch, asubmit_task
from dispatcher.publish.submit_sync import BatchBlock, batch, submit_task
from dispatcher.publish.task_types import (
    BoundTask,
    BoundTaskDecorator,
    BoundTaskFunction,
    SubmissionMethods,
    TaskDecorator,
    TaskFunction,
    UndecoratedTaskDecorator,
)
from dispatcher.schema import (
    DispatcherError,
    InvalidArgumentType,
    InvalidArgumentValue,
    OnDuplicate,
)

__all__ = [
    "JOB_STATES",
    "AsyncBatchBlock",
    "AsyncConnectionProvider",
    "AsyncioRequired",
    "Batch",
    "BatchBlock",
    "BoundTask",
    "BoundTaskDecorator",
    "BoundTaskFunction",
    "BrokerUnavailable",
    "ChunkAssembler",
    "ConnectionProvider",
    "DispatcherCancel",
    "DispatcherError",
    "DispatcherExit",
    "InvalidArgumentType",
    "InvalidArgumentValue",
    "InvalidSubmission",
    "Job",
    "JobState",
    "OnDuplicate",
    "ProcessorOptions",
    "PublishError",
    "Queue",
    "RegisteredTask",
    "RegistrationError",
    "Submission",
    "SubmissionMethods",
    "TaskDecorator",
    "TaskFunction",
    "TaskRegistry",
    "UndecoratedTaskDecorator",
    "abatch",
    "aclose_connections",
    "aget_job",
    "ajobs",
    "asubmit_task",
    "batch",
    "broker_unavailable",
    "close_connections",
    "describe_server",
    "get_job",
    "jobs",
    "prepare_submission",
    "registry",
    "split_message",
    "submit_task",
    "task",
]
