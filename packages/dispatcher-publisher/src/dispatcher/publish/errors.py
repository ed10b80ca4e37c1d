"""What the publisher SDK raises, and the signals a task receives or raises to end itself.

Every error derives from :class:`~dispatcher.schema.DispatcherError`;
:class:`DispatcherCancel` and :class:`DispatcherExit` are signals, not errors, and do not.
"""

from __future__ import annotations

from dispatcher.schema import DispatcherError


class PublishError(DispatcherError):
    """A task could not be submitted.

    Raised as it is (not as a subclass) for causes sending again will not cure: a config
    that configures no broker for the task, missing durable-queue tables, a statement the
    database refuses for good (a missing privilege). The message says which. No config at
    all is no ``PublishError`` but a :class:`~dispatcher.config.NotConfiguredError` (a
    :class:`~dispatcher.config.ConfigError`), as is a config that cannot be read.
    """


class InvalidSubmission(PublishError, ValueError):
    """An option or argument of a submission is wrong; nothing was sent.

    The message names the task, the option and the reason, e.g.
    ``cannot submit myapp.tasks.send_email: timeout: must be at least 0, got -1``.
    """


class BrokerUnavailable(PublishError):
    """The database could not be reached, or failed the send in a way that may pass.

    The message was not sent; sending it again later may succeed (the connection was lost,
    the server was shutting down, a statement timed out). A refusal that would hold however
    often the message is sent (a missing privilege) is a plain :class:`PublishError`.
    """


class AsyncioRequired(PublishError, RuntimeError):
    """An ``a``-prefixed (asyncio) function was called where no asyncio event loop runs.

    Or where the running one is Windows' default ``ProactorEventLoop``, on which psycopg's
    async connections cannot run: run the code on a ``SelectorEventLoop`` (the message says
    how on each Python version).

    Under trio, curio or another event loop: the async API runs on asyncio only (psycopg's
    async connections do). From trio, call the sync API in a worker thread:
    ``await trio.to_thread.run_sync(my_task.delay, ...)``.
    """


class RegistrationError(DispatcherError, ValueError):
    """A function or class cannot be registered as a task (e.g. its name is taken)."""


class DispatcherCancel(BaseException):
    """Raised inside a running task when it is cancelled or times out.

    A control-flow signal, not an error: it is deliberately not a
    :class:`~dispatcher.schema.DispatcherError`, so that ``except DispatcherError`` in a task
    does not swallow it either.

    The service delivers it with a signal reserved for this (a real-time one naming the
    task's run; SIGUSR1 by hand). It derives from
    ``BaseException``, so ``except Exception`` does not swallow it; a task may catch it to
    clean up, and should then re-raise it. A task that ignores it is stopped anyway, with
    SIGTERM and then SIGKILL, after ``service.cancel_grace`` seconds.
    """


class DispatcherExit(BaseException):
    """Raised by a task to end its worker process.

    The task counts as done; the worker exits cleanly and is replaced. Like
    :class:`DispatcherCancel`, a control-flow signal, not a
    :class:`~dispatcher.schema.DispatcherError`.
    """
