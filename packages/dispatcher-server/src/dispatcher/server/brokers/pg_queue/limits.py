"""The ``max_attempts`` the registered tasks declare, applied to rows stored without one.

A publisher that imports the task stores its ``@task(max_attempts=...)`` in the row; one that
does not (``dispatcherctl submit``, ``submit_task('name')``, ``dispatcher_enqueue()``, a
publisher in another language) stores the queue's default, ``brokers.pg_queue.max_attempts``:
the message itself carries no limit. The service imports the task, so it knows the declared
limit: a row whose ``max_attempts`` is the queue's default gets the task's declared limit when
it is claimed (so that the sweep of a dead service's rows, ``dispatcherctl jobs`` and
``get_job()`` see it too), when the outcome of an attempt is written, and when its lease ran
out and a sweep takes it back (for a row claimed by a service that did not know the limit:
an older version, or code reloaded since). A limit given for the job, other than the
default, wins. The claim, acknowledging and sweeping statements take the parameters of
:meth:`DeclaredAttempts.params`.

The limits are known once the first worker has said which tasks are registered: a service
claims nothing before (its capacity is none until then), and sweeps first when its claiming
connection first opens, after that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

Params = dict[str, object]

NO_LIMITS: Final[Params] = {"limit_tasks": [], "limit_values": [], "default_attempts": 0}
"""Parameters that change no row's ``max_attempts`` (no row has 0)."""


def no_declared_limits() -> Mapping[str, int]:
    """No task declares a limit (the tasks are not known)."""
    return {}


class DeclaredAttempts:
    """The statements' parameters for the limits *declared* returns, read at each use.

    *declared* maps task names to their ``@task(max_attempts=...)`` (it changes when code
    is reloaded); *default* is the queue's ``max_attempts``: the value a publisher that does
    not know the task stores. A task declaring the default itself changes nothing.
    """

    def __init__(self, declared: Callable[[], Mapping[str, int]], default: int) -> None:
        self._declared = declared
        self._default = default
        self._seen: Mapping[str, int] | None = None
        self._params: Params = NO_LIMITS

    def params(self) -> Params:
        """``limit_tasks``, ``limit_values`` and ``default_attempts``, for the statements.

        The tasks that declare another limit than the default, and theirs.
        """
        declared = self._declared()
        if declared is not self._seen:  # a new mapping once the tasks are known, or reloaded
            self._seen = declared
            tasks = [task for task, limit in declared.items() if limit != self._default]
            self._params = {
                "limit_tasks": tasks,
                "limit_values": [declared[task] for task in tasks],
                "default_attempts": self._default if tasks else 0,
            }
        return self._params
